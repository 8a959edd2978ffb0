"""Hostile input against the real API server (issue 12, Build 6 and 8).

Hypothesis generates invalid (and some valid) BaseModel, Adapter and
WorkerPool objects (``hostile.py``); each is created on the real API server
with ``dryRun=All`` (full decoding, defaulting, schema, CEL and admission,
nothing stored). Every object must end one of three ways:

- **refused**, with a message naming a field (the mutated one, an enclosing
  one, or the other side of a cross-field rule);
- **accepted and buildable**: the operator's types parse what the server
  stored, and every object the operator would build from it (Service,
  ConfigMap, worker Pod, verify/publish/training Job) is itself accepted by
  the server (also dry-run);
- **operator-only**: accepted and buildable, but what is wrong is listed in
  ``admission.OPERATOR_ONLY`` (a bad rollout-command annotation: CEL cannot
  read annotations), so the operator reports it.

Anything else (accepted but unparseable, a child object the server refuses,
a refusal naming no field) is collected and fails the test, with examples.
Derandomized (fixed seed) so CI sees the same objects every run; no
shrinking (problems are collected, not raised). The counts are printed and
recorded in docs/operator.md ("Admission").
"""

from __future__ import annotations

import importlib.util
import json
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from kubernetes import client
from kubernetes.client.rest import ApiException

from loraplane.operator.api import admission
from loraplane.operator.api.common_types import StoreVolume
from loraplane.operator.api.names import job_name
from loraplane.operator.api.resources import (
    AdapterResource, BaseModelResource, InvalidObject, WorkerPoolResource, parse,
)
from loraplane.operator.api.rollout_types import RolloutCommand
from loraplane.operator.core.manifests import desired_configmap_obj, publish_job, service, verify_job, worker_pod
from loraplane.operator.core.resolve import relpath_of
from loraplane.operator.core.training import train_job_name, training_job

_spec = importlib.util.spec_from_file_location("hostile", Path(__file__).with_name("hostile.py"))
hostile = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(hostile)

EXAMPLES = 400
BUDGET_S = 60
GROUP, VERSION = "loraplane.io", "v1alpha1"
PLURAL = {"WorkerPool": "workerpools", "BaseModel": "basemodels", "Adapter": "adapters"}
MODELS = {"WorkerPool": WorkerPoolResource, "BaseModel": BaseModelResource, "Adapter": AdapterResource}
IMAGE = "worker:dev"
BASE = BaseModelResource.model_validate({
    "metadata": {"name": "base", "namespace": "x", "uid": "00000000-0000-0000-0000-000000000001"},
    "spec": {"storeName": "mistral", "version": "v1", "store": {"hostPath": {"path": "/srv/models"}}}})


@dataclass
class Tally:
    tried: int = 0
    refused: int = 0
    refused_cross_field: int = 0
    accepted: int = 0
    operator_only: int = 0
    problems: list[str] = field(default_factory=list)
    refused_fields: Counter = field(default_factory=Counter)

    def line(self) -> str:
        return (f"tried {self.tried}: refused {self.refused} (of which {self.refused_cross_field} name the other "
                f"field of a cross-field rule), accepted and buildable {self.accepted}, "
                f"operator-only {self.operator_only}, problems {len(self.problems)}")


def _tokens(path: str) -> list[str]:
    return re.findall(r"[^.\[\]]+", path or "")


def naming(body: dict, paths: list[tuple]) -> str | None:
    """'mutated' when the refusal names a mutated field (or one enclosing or
    inside it), 'other' when it names another field, None when no field."""
    message = body.get("message") or ""
    fields = [_tokens(c.get("field", "")) for c in (body.get("details") or {}).get("causes") or []]
    for p in paths:
        want = [str(x) for x in p]
        for f in fields:
            common = next((i for i, (a, b) in enumerate(zip(f, want)) if a != b), min(len(f), len(want)))
            if common >= min(2, len(want)):
                return "mutated"
        if ".".join(want[:2]) in message:
            return "mutated"
    if any(len(f) >= 2 for f in fields) or re.search(r"\b(spec|metadata)\.[A-Za-z]", message):
        return "other"
    return None


def children(res) -> list[dict]:
    """What the operator builds from a parsed object (as reconcile/training do)."""
    if isinstance(res, WorkerPoolResource):
        store = res.spec.store or BASE.spec.store
        return [service(res), desired_configmap_obj(res, "{}"),
                worker_pod(res, max(res.spec.replicas - 1, 0), "node-a", 0, 9000, res.spec.variants[0],
                           res.spec.image or IMAGE, store)]
    gen = res.generation or 1
    if isinstance(res, BaseModelResource):
        spec = res.spec
        relpath, derived = relpath_of(spec, "base")
        out = [verify_job(res, job_name("bm", res.name, "verify", gen, 0), "base", spec.owner, spec.store_name,
                          spec.version, relpath, derived, spec.store, IMAGE, {})]
        hf = spec.source.hugging_face
        if hf:
            out.append(publish_job(res, job_name("bm", res.name, "publish", gen, 0), spec.owner, spec.store_name,
                                   spec.version, hf.repo, hf.revision, hf.token_secret_ref, spec.store, IMAGE, {},
                                   spec.license))
        return out
    if res.spec.training:
        return [training_job(res, BASE, train_job_name(res), "node-a", 0, 8000, IMAGE)]
    relpath, derived = relpath_of(res.spec, "adapter")
    src = res.spec.source
    return [verify_job(res, job_name("adp", res.name, "verify", gen, 0), "adapter", src.owner, src.store_name,
                       res.spec.version, relpath, derived, BASE.spec.store, IMAGE, {})]


class Judge:
    def __init__(self, api_client, namespace: str, tally: Tally):
        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.ns, self.tally = namespace, tally

    def create_child(self, obj: dict) -> None:
        kind, ns = obj["kind"], self.ns
        if kind == "Pod":
            self.core.create_namespaced_pod(ns, obj, dry_run="All")
        elif kind == "Service":
            self.core.create_namespaced_service(ns, obj, dry_run="All")
        elif kind == "ConfigMap":
            self.core.create_namespaced_config_map(ns, obj, dry_run="All")
        else:
            self.batch.create_namespaced_job(ns, obj, dry_run="All")

    def __call__(self, kind: str, doc: dict, paths: list[tuple]) -> None:
        t = self.tally
        t.tried += 1
        what = f"{kind} {json.dumps(doc)[:400]} (mutated {paths})"
        try:
            stored = self.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, PLURAL[kind], doc,
                                                                 dry_run="All")
        except ApiException as e:
            body = json.loads(e.body) if e.body else {}
            named = naming(body, paths) if e.status == 422 else None
            if named is None:
                t.problems.append(f"refused without naming a field (HTTP {e.status}): {what}: {body.get('message')}")
                return
            t.refused += 1
            t.refused_cross_field += named == "other"
            t.refused_fields[".".join(str(x) for x in paths[0][:3])] += 1
            return
        self.accepted(kind, stored, what)

    def accepted(self, kind: str, stored: dict, what: str) -> None:
        t = self.tally
        stored["metadata"]["namespace"] = self.ns
        res = parse(MODELS[kind], stored)
        if isinstance(res, InvalidObject):
            t.problems.append(f"accepted, but the operator's types refuse it ({res.message}): {what}")
            return
        for child in children(res):
            try:
                self.create_child(child)
            except ApiException as e:
                msg = (json.loads(e.body) if e.body else {}).get("message")
                t.problems.append(f"accepted, but the {child['kind']} the operator builds is refused ({msg}): {what}")
                return
        text = res.metadata.annotations.get(hostile.COMMAND_ANNOTATION)
        try:
            if text is not None:
                RolloutCommand.parse(hostile.COMMAND_ID, text)
        except ValueError:
            assert "RolloutCommand._cmd" in admission.OPERATOR_ONLY
            t.operator_only += 1
            return
        t.accepted += 1


def test_hostile_objects_are_refused_or_buildable(dev_cluster, crds_applied, namespace, api_client):
    # worker pods name this ServiceAccount; admission refuses a pod whose SA does not exist
    dev_cluster.kubectl("create", "serviceaccount", "loraplane-workload", "-n", namespace)
    tally = Tally()
    judge = Judge(api_client, namespace, tally)

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=hostile.hostile_objects())
    def run(case):
        judge(*case)

    start = time.monotonic()
    run()
    took = time.monotonic() - start
    print(f"\nhostile input: {tally.line()} in {took:.1f} s")
    print("refusals by first mutated field:", dict(tally.refused_fields.most_common()))
    assert not tally.problems, f"{len(tally.problems)} problems, e.g.:\n" + "\n".join(tally.problems[:15])
    # the generator must exercise both sides, or it proves nothing
    assert tally.tried == EXAMPLES and tally.refused >= EXAMPLES // 4 and tally.accepted >= EXAMPLES // 20
    assert tally.operator_only >= 1
    assert took < BUDGET_S, f"{took:.1f} s is over the {BUDGET_S} s budget"


NAMES = [("WorkerPool", "pool.a"), ("WorkerPool", "7b-agents"), ("WorkerPool", "p" * 64),
         ("BaseModel", "m" * 54), ("BaseModel", "m.v1"), ("Adapter", "a" * 56), ("Adapter", "a.b")]


def test_the_api_server_refuses_names_the_operator_cannot_derive_from(dev_cluster, crds_applied, namespace,
                                                                      api_client):
    """CEL at the schema root reads ``self.metadata.name`` on this API server
    (the issue's examples: a pool named pool.a or 7b-agents, over-long names)."""
    judge = Judge(api_client, namespace, Tally())
    seeds = {k: v[0] for k, v in hostile.SEEDS.items()}
    for kind, name in NAMES:
        doc = {**json.loads(json.dumps(seeds[kind])), "apiVersion": f"{GROUP}/{VERSION}", "kind": kind}
        doc["metadata"]["name"] = name
        try:
            judge.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[kind], doc, dry_run="All")
            raise AssertionError(f"{kind} {name!r} accepted")
        except ApiException as e:
            assert e.status == 422 and "metadata.name" in json.loads(e.body)["message"], e.body
    for kind, name in [("WorkerPool", "p" * 63), ("BaseModel", "m" * 53), ("Adapter", "a" * 55)]:
        doc = {**json.loads(json.dumps(seeds[kind])), "apiVersion": f"{GROUP}/{VERSION}", "kind": kind}
        doc["metadata"]["name"] = name
        judge.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[kind], doc, dry_run="All")


ISSUE_CASES = [
    ("WorkerPool", ("spec", "resources", "cpu"), "lots"),
    ("WorkerPool", ("spec", "resources", "memory"), "-1Gi"),
    ("WorkerPool", ("spec", "rollouts", "synth", "steps"), [50, 25, 100]),
    ("Adapter", ("spec", "training", "resources", "memory"), "1e"),
    ("WorkerPool", ("spec", "gpu", "tolerations"), [{"value": "x"}]),
    ("BaseModel", ("spec", "store", "hostPath", "path"), "/srv/../etc"),
    ("BaseModel", ("spec", "store", "mountPath"), "/tmp"),
]


def test_the_issues_crash_loop_objects_are_refused_naming_the_field(dev_cluster, crds_applied, namespace,
                                                                    api_client):
    judge = Judge(api_client, namespace, Tally())
    for kind, path, value in ISSUE_CASES:
        seed = hostile.SEEDS[kind][-1 if kind == "Adapter" else 0]
        doc = {**json.loads(json.dumps(seed)), "apiVersion": f"{GROUP}/{VERSION}", "kind": kind}
        hostile.set_path(doc, path, value)
        try:
            judge.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[kind], doc, dry_run="All")
            raise AssertionError(f"{kind} {path}={value!r} accepted")
        except ApiException as e:
            body = json.loads(e.body)
            assert e.status == 422 and naming(body, [path]) == "mutated", (path, body["message"])
