"""Two operator replicas against the real API server: exactly one acts, and
when it is SIGKILLed the standby takes over (measured), cluster-wide
(ClusterKopfPeering, the chart's default) and namespaced (``--namespace``:
kopf peers through a KopfPeering in the watched namespace, which the chart
creates when ``watchNamespaces`` is set).

"Acts" is read from each process's own ``/metrics``: the count of reconcile
passes (``loraplane_operator_reconcile_duration_seconds_count``) of a paused standby
stays 0. Takeover time = from the SIGKILL until the standby has reconciled a
spec change made right after the kill (``status.observedGeneration``); it is
bounded by the peering keep-alive lifetime (the dead peer's entry must
expire), set short here (``LIFETIME``) and 30 s in the chart.

Before priorities were set, both replicas had kopf's default priority 0 and
kopf paused both ("Pausing all operators, including self"): the spec change
was never reconciled and this test failed at "A reconciles".
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from loraplane.demo import OperatorProcess
from loraplane.devcluster.cluster import free_port
from loraplane.devcluster.waiting import wait_for

ROOT = Path(__file__).resolve().parents[3]
LIFETIME = 8  # seconds; keep-alives every 1-3 s
PEERING_CRDS = ROOT / "charts" / "loraplane" / "crds" / "kopf.dev_peerings.yaml"


@pytest.fixture(scope="module")
def crds(dev_cluster):
    dev_cluster.kubectl("apply", "-f", str(ROOT / "crds"), "-f", str(PEERING_CRDS))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


def passes(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("loraplane_operator_reconcile_duration_seconds_count"))


def observed(cluster, ns: str) -> int | None:
    pool = cluster.get_json("wp", "p", "-n", ns)
    return (pool.get("status") or {}).get("observedGeneration")


def peers(cluster, kind: str, name: str, ns: str | None) -> dict:
    args = [kind, name, "-o", "json"] + (["-n", ns] if ns else [])
    out = cluster.kubectl("get", *args, check=False)
    return (json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}


def set_replicas(cluster, ns: str, n: int) -> int:
    cluster.kubectl("patch", "wp", "p", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"replicas": n}}))
    return cluster.get_json("wp", "p", "-n", ns)["metadata"]["generation"]


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_one_of_two_replicas_acts_and_the_standby_takes_over_after_a_sigkill(dev_cluster, crds, namespace,
                                                                            tmp_path, scope):
    ns, name = namespace, f"ha-{uuid.uuid4().hex[:6]}"
    kind = "clusterkopfpeering" if scope == "cluster" else "kopfpeering"
    where = None if scope == "cluster" else ns
    dev_cluster.apply({"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering" if where is None else "KopfPeering",
                       "metadata": {"name": name, **({"namespace": ns} if where else {})}})
    # A pool whose BaseModel does not exist: every pass writes its status, no GPU node needed.
    dev_cluster.apply({"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p"},
                       "spec": {"baseModelRef": "absent", "replicas": 1}}, namespace=ns)
    ports = {"a": free_port(), "b": free_port()}

    def start(who: str) -> OperatorProcess:
        extra = {"peering": name, "peering_lifetime": LIFETIME, "metrics_port": ports[who], "resync_seconds": 2}
        if where:
            extra["namespace"] = ns
        return OperatorProcess(dev_cluster.kubeconfig, tmp_path, tmp_path / f"operator-{who}.log",
                               extra=extra).start()

    a = start("a")
    b = None
    try:
        wait_for(lambda: observed(dev_cluster, ns) == 1, timeout=60, what="A reconciles the pool")
        b = start("b")
        wait_for(lambda: len(peers(dev_cluster, kind, name, where)) == 2, timeout=30, what="both replicas peering")
        gen = set_replicas(dev_cluster, ns, 2)
        wait_for(lambda: observed(dev_cluster, ns) == gen, timeout=30, what="A reconciles the change")
        time.sleep(1.0)
        assert passes(ports["a"]) > 0 and passes(ports["b"]) == 0, (passes(ports["a"]), passes(ports["b"]))
        priorities = sorted(p["priority"] for p in peers(dev_cluster, kind, name, where).values())
        assert len(set(priorities)) == 2, priorities  # equal priorities would pause both

        a.kill()  # SIGKILL: no goodbye in the peering object, the entry must expire
        killed = time.monotonic()
        gen = set_replicas(dev_cluster, ns, 3)
        wait_for(lambda: observed(dev_cluster, ns) == gen, timeout=LIFETIME + 40, interval=0.2,
                 what="the standby reconciles the change")
        takeover = time.monotonic() - killed
        print(f"\nHA {scope}: takeover after SIGKILL {takeover:.1f} s (peering lifetime {LIFETIME} s)")
        assert passes(ports["b"]) > 0
        assert takeover < LIFETIME + 20, takeover
    finally:
        for op in (a, b):
            if op is not None:
                op.stop()
        print((tmp_path / "operator-b.log").read_text()[-3000:] if (tmp_path / "operator-b.log").exists() else "")
        dev_cluster.kubectl("delete", kind, name, *(["-n", where] if where else []), "--wait=false", check=False)
