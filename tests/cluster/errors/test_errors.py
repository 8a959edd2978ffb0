"""What only the operator can detect, against the real API server with the
real operator: objects it cannot build, references to objects that do not
exist, a terminating namespace. Each must end in a condition with a clear
reason and at most one Event, with no child object, no traceback and no
retry faster than the backoff; and kstatus (the library Argo CD and Flux
use, built from its Go module) must read each state right.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
import urllib.request
from pathlib import Path

import yaml

from loraplane.devcluster import kstatus_build
from loraplane.devcluster.waiting import wait_for

BASE_NAME, BASE_VERSION = "mistral-7b-instruct", "v0.3"
API = "loraplane.io/v1alpha1"
QUIET_SECONDS = 10
CRDS = Path(__file__).resolve().parents[3] / "crds"


@contextlib.contextmanager
def loose_crds(cluster):
    """The CRDs without their schema (and CEL) for the objects created inside: what a cluster
    holds after a CRD upgrade whose new rules refuse objects stored before. The real CRDs
    are back on exit; the objects stay (validation ratcheting lets unchanged fields be)."""
    loose = []
    for path in sorted(CRDS.glob("loraplane.io_*.yaml")):
        crd = yaml.safe_load(path.read_text())
        for v in crd["spec"]["versions"]:
            v["schema"] = {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}
        loose.append(crd)
    try:
        cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(c) for c in loose))
        yield
    finally:
        cluster.kubectl("apply", "-f", str(CRDS))


def base_doc(store, name="m") -> dict:
    return {"apiVersion": API, "kind": "BaseModel", "metadata": {"name": name},
            "spec": {"storeName": BASE_NAME, "version": BASE_VERSION,
                     "store": {"hostPath": {"path": str(store)}, "mountPath": "/models"},
                     "variants": [{"name": "fp16", "vramMiB": 14336}, {"name": "bnb-int8", "vramMiB": 7680}]}}


def pool_doc(name, selector, base="m", replicas=1, **spec) -> dict:
    return {"apiVersion": API, "kind": "WorkerPool", "metadata": {"name": name},
            "spec": {"baseModelRef": base, "replicas": replicas, "variants": ["bnb-int8"],
                     "gpu": {"nodeSelector": selector}, "routes": {}, **spec}}


def adapter_doc(name, base="m") -> dict:
    return {"apiVersion": API, "kind": "Adapter", "metadata": {"name": name},
            "spec": {"baseModelRef": base, "task": "synthesizer", "version": "v1",
                     "source": {"storeName": "synthesizer"}}}


def apply(cluster, ns, doc) -> str | None:
    """None when stored, else the API server's refusal."""
    out = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc), check=False)
    return None if out.returncode == 0 else out.stderr


def get(cluster, ns, kind, name) -> dict | None:
    out = cluster.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def cond(obj: dict | None, type_="Ready") -> dict:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def passes(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^loraplane_operator_reconcile_duration_seconds_count\{[^}]*\} (\S+)$",
                                            text, re.M))


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tracebacks(op) -> int:
    return op.log.read_text().count("Traceback") if op.log.exists() else 0


def events_of(cluster, ns, name) -> list[dict]:
    items = json.loads(cluster.kubectl("get", "events", "-n", ns, "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def children(cluster, ns, name) -> list[str]:
    """Pods of the pool ``name``, Jobs of the object ``name``, its Service and ConfigMap."""
    found = []
    for kind, match in (("pods", lambda labels: labels.get("loraplane.io/pool") == name),
                        ("jobs", lambda labels: labels.get("loraplane.io/owner", "").partition(".")[2] == name)):
        items = json.loads(cluster.kubectl("get", kind, "-n", ns, "-o", "json").stdout)["items"]
        found += [f"{kind}/{i['metadata']['name']}" for i in items if match(i["metadata"].get("labels") or {})]
    for kind, child in (("service", name), ("configmap", f"{name}-desired")):
        if get(cluster, ns, kind, child):
            found.append(f"{kind}/{child}")
    return found


def all_objects(cluster, ns) -> list[dict]:
    objs = []
    for plural in ("basemodels", "adapters", "workerpools"):
        objs += json.loads(cluster.kubectl("get", plural, "-n", ns, "-o", "json").stdout)["items"]
    return objs


def kstatus_of(cluster, ns) -> dict[tuple[str, str], str]:
    return {(r["kind"], r["name"]): r["status"] or r["error"] for r in kstatus_build.compute(all_objects(cluster, ns))}


class Health:
    """kstatus over every object each time ``sample`` runs (at most once a second), checked
    against the object's own Ready condition: Current only when Ready, Failed never when Ready."""

    def __init__(self, cluster, ns):
        self.cluster, self.ns, self.last, self.samples = cluster, ns, 0.0, 0
        self.seen: dict[str, list[str]] = {}

    def sample(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.last < 1.0:
            return
        self.last, self.samples = time.monotonic(), self.samples + 1
        objs = all_objects(self.cluster, self.ns)
        for obj, r in zip(objs, kstatus_build.compute(objs)):
            ready = cond(obj)
            state = f"{r['status'] or r['error']}({ready.get('reason', 'no status')})"
            key = f"{obj['kind']}/{obj['metadata']['name'][:20]}"
            if state not in self.seen.setdefault(key, []):
                self.seen[key].append(state)
            if ready:  # before the operator's first status write kstatus can only say Current
                assert (r["status"] == "Current") == (ready["status"] == "True" and
                                                      cond(obj, "Progressing").get("status") != "True"), (key, r, obj)
                assert r["status"] != "Failed" or ready["status"] != "True", (key, r)


HOSTILE = [  # (kind, doc, the field the refusal or the condition must name, expected reason)
    ("wp", lambda s: pool_doc("pool.a", s), "metadata.name", "InvalidSpec"),
    ("wp", lambda s: pool_doc("p" * 70, s), "metadata.name", "InvalidSpec"),
    ("wp", lambda s: pool_doc("cpu-lots", s, resources={"cpu": "lots"}), "resources.cpu", "InvalidSpec"),
    ("wp", lambda s: pool_doc("mem-neg", s, resources={"memory": "-1Gi"}), "resources.memory", "InvalidSpec"),
    ("wp", lambda s: pool_doc("steps-order", s, routes={"synthesizer": [{"adapter": "syn-v1", "weight": 100}]},
                              rollouts={"synthesizer": {"canary": "syn-v2", "steps": [50, 25, 100]}}),
     "steps", "InvalidSpec"),  # pydantic refuses the order, today's CRD does not
    ("adp", lambda s: adapter_doc("a" * 60), "metadata.name", "InvalidSpec"),
    ("adp", lambda s: adapter_doc("orphan", base="nope"), "BaseModel nope", "BaseModelMissing"),
    ("wp", lambda s: pool_doc("no-base", s, base="nope"), "BaseModel nope", "BaseModelMissing"),
]


def test_unbuildable_and_dangling_objects_are_reported_once_and_quietly(dev_cluster, namespace, errors_store,
                                                                        run_operator, gpu_node):
    ns, cluster = namespace, dev_cluster
    assert apply(cluster, ns, base_doc(errors_store)) is None
    # The control: a valid pool gets its worker (its route names an Adapter that does not exist: said, not fatal)
    ghost = {"synthesizer": [{"adapter": "ghost", "weight": 100}]}
    assert apply(cluster, ns, pool_doc("ok", gpu_node, routes=ghost)) is None
    accepted, refused = [], []
    for kind, make, field, reason in HOSTILE:  # first as a user would: the API server may refuse
        doc = make(gpu_node)
        why = apply(cluster, ns, doc)
        if why is None:
            accepted.append((kind, doc["metadata"]["name"], field, reason))
        else:  # refused, then with a message naming the field
            assert field.split(".")[-1] in why, why
            refused.append((kind, make, field, reason))
    print(f"accepted {len(accepted)}, refused by the API server {len(refused)}: "
          f"{[make(gpu_node)['metadata']['name'][:20] for _, make, _, _ in refused]}")
    with loose_crds(cluster):  # the refused ones as stored before the CRD's current rules
        for kind, make, field, reason in refused:
            doc = make(gpu_node)
            assert apply(cluster, ns, doc) is None
            accepted.append((kind, doc["metadata"]["name"], field, reason))
    assert any(r == "BaseModelMissing" for *_, r in accepted)
    assert any(r == "InvalidSpec" for *_, r in accepted)
    # The operator starts (an upgrade) with these objects stored. A status write to one that breaks a
    # rule at the root of its CRD (its name) is refused too: that one can only get its Event.
    op, port = run_operator(ns)
    health = Health(cluster, ns)

    def said(kind, name, field, reason) -> str | None:
        c = cond(get(cluster, ns, kind, name))
        if c.get("reason") == reason:
            assert c["status"] == "False" and field in c["message"], (name, c)
            return "condition"
        evs = [e for e in events_of(cluster, ns, name) if e["reason"] == reason]
        if reason == "InvalidSpec" and evs and "refuses any write" in evs[0]["message"]:
            assert field.split(".")[-1] in evs[0]["message"], evs[0]["message"]
            return "event only"
        return None

    def reported():
        health.sample()
        return all(said(*a) for a in accepted) and children(cluster, ns, "ok")
    try:
        wait_for(reported, timeout=60, interval=0.5, what="every object reported, the valid pool's worker created")
    except TimeoutError:
        print({n[:20]: cond(get(cluster, ns, k, n)) for k, n, _, _ in accepted}, op.tail(30))
        raise
    how = {name: said(kind, name, field, reason) for kind, name, field, reason in accepted}
    print("reported by:", {n[:20]: h for n, h in how.items()})

    assert "adapter ghost (route synthesizer) not found" in cond(get(cluster, ns, "wp", "ok"), "Degraded")["message"]

    p0, c0, t0 = passes(port), cpu_seconds(op.proc.pid), time.monotonic()
    time.sleep(QUIET_SECONDS)
    n_passes, cpu = passes(port) - p0, cpu_seconds(op.proc.pid) - c0
    print(f"over {time.monotonic() - t0:.1f} s: {n_passes:.0f} passes for {len(accepted) + 2} objects, "
          f"{cpu:.2f} s operator CPU, {tracebacks(op)} tracebacks")
    assert tracebacks(op) == 0, op.tail(80)
    # resync 5 s, backoff 1 s doubling (the suite's operator flags): a few passes per object, not ~100
    assert n_passes <= 4 * (len(accepted) + 2), n_passes
    assert cpu < 3.0, cpu
    for kind, name, _, reason in accepted:
        evs = events_of(cluster, ns, name)
        assert len(evs) <= 2, [(e["reason"], e["message"]) for e in evs]
        made = children(cluster, ns, name)
        if reason == "BaseModelMissing":  # the pool's Service does not depend on the base: no workers, no Jobs
            made = [c for c in made if not c.startswith("service/")]
        assert made == [], (name, made)

    health.sample(force=True)
    final = kstatus_of(cluster, ns)
    assert final[("BaseModel", "m")] == "Current"
    assert final[("WorkerPool", "ok")] in ("InProgress", "Failed")  # starting, or up with its route broken
    for kind, name, _, _ in accepted:  # one without status cannot say it: kstatus reads it Current
        full = {"wp": "WorkerPool", "adp": "Adapter"}[kind]
        assert final[(full, name)] == ("Failed" if how[name] == "condition" else "Current"), (name, final)

    # The missing base appears: the Adapter goes on at once, not at its next backoff.
    assert apply(cluster, ns, base_doc(errors_store, name="nope")) is None
    t = time.monotonic()
    wait_for(lambda: cond(get(cluster, ns, "adp", "orphan")).get("reason") not in ("BaseModelMissing", None),
             timeout=15, interval=0.2, what="orphan Adapter past BaseModelMissing")
    print(f"orphan Adapter saw its BaseModel after {time.monotonic() - t:.1f} s")
    health.sample(force=True)
    print(f"kstatus over {health.samples} samples: {json.dumps(health.seen)}")
    assert tracebacks(op) == 0, op.tail(80)


def test_terminating_namespace_gets_no_new_children(dev_cluster, namespace, errors_store, run_operator, gpu_node):
    ns, cluster = namespace, dev_cluster
    op, port = run_operator(ns)
    base, pool = base_doc(errors_store), pool_doc("p", gpu_node, replicas=2)
    for doc in (base, pool):  # both stay while their namespace goes: the pool still wants its workers
        doc["metadata"]["finalizers"] = ["loraplane.io/test-hold"]
        assert apply(cluster, ns, doc) is None
    wait_for(lambda: len(children(cluster, ns, "p")) >= 3, timeout=60, interval=0.5, what="the pool's workers")
    cluster.kubectl("delete", "namespace", ns, "--wait=false")
    try:
        wait_for(lambda: not [c for c in children(cluster, ns, "p") if c.startswith("pods/")], timeout=60,
                 interval=0.5, what="the namespace's pods deleted")
        p0 = passes(port)
        time.sleep(QUIET_SECONDS)
        pods = [c for c in children(cluster, ns, "p") if c.startswith("pods/")]
        log = op.log.read_text()
        refusals = log.count("NamespaceTerminating")
        pool_now = get(cluster, ns, "wp", "p")
        print(f"terminating namespace: {passes(port) - p0:.0f} passes in {QUIET_SECONDS} s, {refusals} refusal "
              f"lines, {tracebacks(op)} tracebacks, pods {pods}, Ready {cond(pool_now)}, "
              f"kstatus {kstatus_of(cluster, ns)}")
        assert tracebacks(op) == 0, op.tail(80)
        assert pods == []
        assert refusals <= 2, op.tail(40)
        assert cond(pool_now).get("reason") == "NamespaceTerminating", cond(pool_now)
    finally:
        for kind, name in (("wp", "p"), ("bm", "m")):
            cluster.kubectl("patch", kind, name, "-n", ns, "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
                            check=False)
