"""Object names the API server accepts become valid names and label values
wherever the operator uses them, and the rest are refused on both sides:
by the CRD's root CEL rule on ``self.metadata.name`` (the API server) and by
the operator's types (``parse`` -> ``InvalidObject`` naming ``metadata.name``).

The derived objects are built by the real core functions (Service, worker
Pod, desired ConfigMap, verify/publish/training Jobs), so a new derived label
that a long name would overflow fails here."""

from __future__ import annotations

import re

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraplane.operator.api import crdgen, names
from loraplane.operator.api.common_types import SecretKeyRef, StoreVolume
from loraplane.operator.api.resources import (
    AdapterResource, BaseModelResource, InvalidObject, WorkerPoolResource, parse,
)
from loraplane.operator.core.manifests import desired_configmap_obj, publish_job, service, verify_job, worker_pod
from loraplane.operator.core.training import train_job_name, training_job
from loraplane.operator.api.names import job_name

# Kubernetes' own rules (k8s.io/apimachinery/pkg/util/validation).
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUB = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

STORE = {"persistentVolumeClaim": {"claimName": "store", "readOnly": False}}


def _obj(kind: str, name: str, spec: dict) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": "u", "generation": 123456}, "spec": spec}


def pool(name: str) -> dict:
    return _obj("WorkerPool", name, {"baseModelRef": "m", "replicas": 1000})


def base(name: str) -> dict:
    return _obj("BaseModel", name, {"storeName": "tiny", "version": "v1", "store": STORE})


def adapter(name: str) -> dict:
    return _obj("Adapter", name, {"baseModelRef": "m", "task": "t", "version": "v1",
                                   "training": {"dataset": {"paths": ["d.jsonl"]}}})


MAKERS = {"WorkerPool": (pool, WorkerPoolResource), "BaseModel": (base, BaseModelResource),
          "Adapter": (adapter, AdapterResource)}


def derived(kind: str, name: str) -> list[dict]:
    """Every object the operator builds from an object named ``name``."""
    make, model = MAKERS[kind]
    res = model.model_validate(make(name))
    store = StoreVolume.model_validate(STORE)
    if kind == "WorkerPool":
        return [service(res), desired_configmap_obj(res, "{}"),
                worker_pod(res, 999, "node-a", 0, 9000, "fp16", "img", store)]
    if kind == "BaseModel":
        return [verify_job(res, job_name("bm", name, step, 123456, 99), "base", "default", "tiny", "v1", "x", True,
                           store, "img", {})
                for step in ("verify", "publish")] + [
            publish_job(res, job_name("bm", name, "publish", 1, 0), "default", "tiny", "v1", "o/r", "main",
                        SecretKeyRef(name="hf"), store, "img", {})]
    b = BaseModelResource.model_validate(base("m"))
    return [training_job(res, b, train_job_name(res), "node-a", 0, 8000, "img"),
            verify_job(res, job_name("adp", name, "verify", 123456, 99), "adapter", "default", "a", "v1", "x",
                       True, store, "img", {})]


def _labels(obj: dict):
    yield from (obj["metadata"].get("labels") or {}).items()
    tmpl = (obj.get("spec") or {}).get("template")
    if tmpl:
        yield from (tmpl["metadata"].get("labels") or {}).items()


def problems(obj: dict) -> list[str]:
    """What the API server would refuse in a derived object's names and labels."""
    out = []
    name, kind = obj["metadata"]["name"], obj["kind"]
    name_re = DNS1035 if kind == "Service" else DNS1123_SUB
    if not name_re.match(name) or len(name) > (63 if kind == "Service" else 253):
        out.append(f"{kind} name {name!r}")
    if kind == "Job":  # the Job controller puts the Job's name in its pods' job-name label
        if not LABEL_VALUE.match(name) or len(name) > 63:
            out.append(f"Job name {name!r} as a label value")
    for key, value in _labels(obj):
        if not LABEL_VALUE.match(value) or len(value) > 63:
            out.append(f"{kind} label {key}={value!r}")
    return out


def accepted(kind: str, name: str) -> bool:
    return names.name_problem(kind, name) is None


# Names a user can create at all: DNS-1123 subdomains up to 253 characters.
SUBDOMAIN = st.one_of(
    st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,78}[a-z0-9])?\Z"),
    st.integers(45, 70).flatmap(lambda n: st.text("abz09-", min_size=n, max_size=n)),  # near the limits
).filter(lambda s: DNS1123_SUB.match(s))


@pytest.mark.parametrize("kind", sorted(MAKERS))
@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=SUBDOMAIN)
def test_every_accepted_name_derives_valid_objects(kind, name):
    if accepted(kind, name):
        assert [p for obj in derived(kind, name) for p in problems(obj)] == []


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_the_longest_accepted_name_derives_valid_objects(kind):
    longest = "a" * names.NAME_RULES[kind].max_length
    assert accepted(kind, longest) and not accepted(kind, longest + "a")
    assert [p for obj in derived(kind, longest) for p in problems(obj)] == []


REFUSED = [
    ("WorkerPool", "pool.a"), ("WorkerPool", "7b-agents"), ("WorkerPool", "p" * 64),
    ("BaseModel", "m.v1"), ("BaseModel", "m" * 54), ("Adapter", "a.b"), ("Adapter", "a" * 56),
]


@pytest.mark.parametrize("kind,name", REFUSED)
def test_names_the_operator_cannot_use_are_refused_by_its_types(kind, name):
    make, model = MAKERS[kind]
    got = parse(model, make(name))
    assert isinstance(got, InvalidObject), f"{kind} {name!r} parsed"
    assert got.fields == ["metadata.name"]
    assert "metadata.name" in got.message


@pytest.mark.parametrize("kind,name", [("WorkerPool", "pool-a"), ("WorkerPool", "p" * 63),
                                       ("BaseModel", "m" * 53), ("Adapter", "a" * 55), ("Adapter", "7b-agent")])
def test_names_the_operator_can_use_parse(kind, name):
    make, model = MAKERS[kind]
    assert not isinstance(parse(model, make(name)), InvalidObject)


def _root_rules(kind: str) -> list[dict]:
    plural = next(r[1] for r in crdgen.RESOURCES if r[0] == kind)
    doc = yaml.safe_load(crdgen.render_all()[f"loraplane.io_{plural}.yaml"])
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]


@pytest.mark.parametrize("kind", sorted(MAKERS))
def test_the_crd_root_refuses_the_same_names(kind):
    """The API server's rule is built from the same pattern and limit (the
    cluster test tests/cluster/admission checks the server applies it)."""
    rule = names.NAME_RULES[kind]
    rules = _root_rules(kind)
    text = " ".join(r["rule"] for r in rules)
    assert f"size(self.metadata.name) <= {rule.max_length}" in text
    assert f"self.metadata.name.matches('{rule.pattern}')" in text
    assert all("metadata.name" in r["message"] for r in rules)
