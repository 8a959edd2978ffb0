"""``loraplane demo``: a canary rollout end to end on this machine.

Starts the local control plane (``DevCluster``: etcd, kube-apiserver,
controller-manager, scheduler, KWOK), creates fake RTX 3090 nodes, applies the
CRDs, runs the operator as a subprocess, publishes a tiny random-weight base
and two versions of an adapter into a temporary ModelStore, applies a
BaseModel, two Adapters and a WorkerPool with 2 replicas, and lets
``HostRunner`` give the pool's KWOK pods real CPU worker processes with the
pods' identity. Then it sends traffic (``traffic.Traffic``, standing in for the
Service), shifts the canary 5 -> 50 -> 100 with ``kubectl loraplane``, rolls
back, and prints a timeline: time, action, effective weights, responses per
version and p50/p95 in each phase.

Everything it starts is stopped on exit, Ctrl-C included. The pieces
(``build_store``, ``manifests``, ``OperatorProcess``) are reused by the
cluster tests in ``tests/cluster/canary``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loraplane.devcluster.waiting import wait_for

BASE_NAME, BASE_VERSION = "tiny-mistral", "v1"
ADAPTER_STORE_NAME = "summarizer"
TASK = "summarize"


# ---- reusable pieces -----------------------------------------------------------

def build_store(root: Path, work: Path, versions: tuple[str, ...] = ("v1", "v2")) -> Path:
    """A ModelStore with the tiny base and ``versions`` of the summarizer
    adapter (different seeds, so they answer differently)."""
    from loraplane.modelstore import ModelStore
    from loraplane.tiny_model import build_adapter, build_base

    store = ModelStore(root)
    base = build_base(work / "base")
    store.publish(base, kind="base", name=BASE_NAME, version=BASE_VERSION)
    for i, v in enumerate(versions):
        ad = build_adapter(base, work / f"adapter-{v}", seed=i + 1, r=8)
        store.publish(ad, kind="adapter", name=ADAPTER_STORE_NAME, version=v, task=TASK,
                      base_name=BASE_NAME, base_version=BASE_VERSION)
    return root


def manifests(store_root: Path, node_selector: dict, replicas: int = 2,
              adapters: dict[str, str] | None = None, pool: str = "demo", rollouts: dict | None = None) -> list[dict]:
    """BaseModel ``tiny``, one Adapter per ``{name: store version}``, and the pool
    routing ``summarize`` 100% to the first adapter."""
    adapters = adapters or {"sum-v1": "v1", "sum-v2": "v2"}
    api = "loraplane.io/v1alpha1"
    docs = [{"apiVersion": api, "kind": "BaseModel", "metadata": {"name": "tiny"},
             "spec": {"storeName": BASE_NAME, "version": BASE_VERSION,
                      "store": {"hostPath": {"path": str(store_root)}, "mountPath": "/models"},
                      "variants": [{"name": "fp16", "vramMiB": 2048}]}}]
    for name, version in adapters.items():
        docs.append({"apiVersion": api, "kind": "Adapter", "metadata": {"name": name},
                     "spec": {"baseModelRef": "tiny", "task": TASK, "version": version,
                              "source": {"storeName": ADAPTER_STORE_NAME}}})
    first = next(iter(adapters))
    spec = {"baseModelRef": "tiny", "replicas": replicas, "variants": ["fp16"],
            "resources": {"cpu": "1", "memory": "2Gi"},
            "gpu": {"nodeSelector": node_selector, "kvCacheMiB": 256, "headroomMiB": 256},
            "routes": {TASK: [{"adapter": first, "weight": 100}]}}
    if rollouts:
        spec["rollouts"] = rollouts
    docs.append({"apiVersion": api, "kind": "WorkerPool", "metadata": {"name": pool}, "spec": spec})
    return docs


class OperatorProcess:
    """``loraplane operator run`` in its own process group, logging to a file."""

    def __init__(self, kubeconfig: Path, store: Path, log: Path, resync_seconds: int = 5,
                 extra: dict | None = None):
        """``extra``: more ``--flag value`` pairs (``{"namespace": "ns"}``); a
        flag given again (e.g. ``kubeconfig``) overrides the one above."""
        self.kubeconfig, self.store, self.log, self.resync = kubeconfig, store, log, resync_seconds
        self.extra = extra or {}
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OperatorProcess":
        args = [sys.executable, "-m", "loraplane.cli", "operator", "run", "--kubeconfig", str(self.kubeconfig),
                "--store-root", str(self.store), "--metrics-port", "0", "--resync-seconds", str(self.resync),
                "--backoff-base-seconds", "1",
                "--job-pod-annotations", json.dumps({"loraplane.io/kwok-result": "Succeeded"})]
        for flag, value in self.extra.items():
            args += [f"--{flag.replace('_', '-')}", str(value)]
        env = {**os.environ, "PYTHONSAFEPATH": "1"}
        self.proc = subprocess.Popen(args, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL: the crash a restart test needs."""
        self.stop(signal.SIGKILL)

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text().splitlines()[-n:]) if self.log.exists() else ""


def plugin(kubeconfig: Path, namespace: str, *args: str) -> str:
    """Run ``kubectl-loraplane`` (the console script's entry point) and return its output."""
    cmd = [sys.executable, "-c", "import sys; from loraplane.operator.cli.kubectl_plugin import main; sys.exit(main())",
           "--kubeconfig", str(kubeconfig), "-n", namespace, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
    if out.returncode != 0:
        raise RuntimeError(f"kubectl loraplane {' '.join(args)} failed ({out.returncode}): {out.stderr or out.stdout}")
    return out.stdout


def effective(pool: dict, task: str = TASK) -> dict[str, int]:
    return {b["adapter"]: b["weight"] for b in ((pool.get("status") or {}).get("effectiveRoutes") or {}).get(task, [])
            if b["weight"] > 0}


def worker_reports(cluster, namespace: str, pool: str) -> dict[str, dict]:
    pods = json.loads(cluster.kubectl("get", "pods", "-n", namespace, "-l", f"loraplane.io/pool={pool}",
                                      "-o", "json").stdout)["items"]
    out = {}
    for p in pods:
        raw = (p["metadata"].get("annotations") or {}).get("loraplane.io/worker-status")
        out[p["metadata"]["name"]] = json.loads(raw) if raw else {}
    return out


# ---- the demo ------------------------------------------------------------------------

def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", help="keep state here (default: a temporary directory, removed on exit)")
    p.add_argument("--hold", type=float, default=6.0, help="seconds of traffic per phase")
    p.add_argument("--concurrency", type=int, default=2, help="client threads sending requests")


def _fmt_weights(w: dict[str, int]) -> str:
    return " ".join(f"{a}={n}" for a, n in sorted(w.items())) or "-"


def _ms(x: float | None) -> str:
    return f"{x * 1000:.0f}ms" if x is not None else "-"


def run(args) -> int:
    from loraplane.devcluster.cluster import DevCluster
    from loraplane.devcluster.hostrunner import HostRunner
    from loraplane.traffic import Traffic, summarize

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="loraplane-demo-")
        work = Path(tmp.name)
    t_start = time.monotonic()
    rows: list[tuple] = []
    cluster = operator = runner = traffic = None

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.1f}s] {msg}", flush=True)

    # Ctrl-C and SIGTERM both unwind through the finally below (SIGINT explicitly:
    # a shell's background job starts with it ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ns = "demo"
    try:
        say("starting the local control plane (etcd, kube-apiserver, scheduler, controller-manager, KWOK)")
        cluster = DevCluster(workdir=work / "cluster").start()
        kube = cluster.kubeconfig
        nodes = cluster.create_gpu_nodes(2, gpus_per_node=1, prefix="demo-3090", labels={"loraplane.io/demo": "1"})
        say(f"fake RTX 3090 nodes: {', '.join(nodes)}")
        crd_dir = work / "crds"
        subprocess.run([sys.executable, "-m", "loraplane.operator.api.crdgen", str(crd_dir)], check=True,
                       capture_output=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
        cluster.kubectl("apply", "-f", str(crd_dir))
        cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        say("publishing a tiny base and summarizer v1, v2 into a ModelStore")
        with contextlib.redirect_stderr(io.StringIO()):  # progress bars of the tiny model's save/load
            store = build_store(work / "store", work / "build")
        operator = OperatorProcess(kube, store, work / "operator.log").start()
        say(f"operator running (pid {operator.proc.pid}, log {work / 'operator.log'})")
        cluster.kubectl("create", "namespace", ns)
        wait_for(lambda: cluster.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0,
                 what="the default ServiceAccount")
        cluster.kubectl("apply", "-n", ns, "-f", "-",
                        input="\n---\n".join(json.dumps(d) for d in manifests(store, {"loraplane.io/demo": "1"})))
        say("applied BaseModel tiny, Adapters sum-v1/sum-v2, WorkerPool demo (2 replicas, routes summarize -> sum-v1)")
        runner = HostRunner(kube, ns, work / "pods", selector="loraplane.io/pool=demo",
                            extra_env={"LORAPLANE_THREADS": "1", "OMP_NUM_THREADS": "1"}, grace_seconds=10).start()
        say("HostRunner: the pool's pods get real CPU worker processes (pod env, hostPath store, own port)")

        def pool() -> dict:
            return json.loads(cluster.kubectl("get", "workerpool", "demo", "-n", ns, "-o", "json").stdout)

        wait_for(lambda: len([r for r in worker_reports(cluster, ns, "demo").values() if r.get("ready")]) == 2,
                 timeout=240, what="2 ready workers")
        wait_for(lambda: effective(pool()) == {"sum-v1": 100}, timeout=60, what="effective routes")
        say("2 workers ready; sending traffic to task 'summarize'")
        traffic = Traffic(kube, ns, "demo", TASK, concurrency=args.concurrency).start()

        def phase(action: str, expect: dict[str, int], *command: str) -> None:
            at = time.monotonic() - t_start
            t0 = time.time()
            if command:
                plugin(kube, ns, *command)
            wait_for(lambda: effective(pool()) == expect, timeout=90, what=f"effective weights {expect}")
            took = time.time() - t0
            t1 = time.time()
            time.sleep(args.hold)
            s = summarize(traffic.since(t1))
            rows.append((at, action, _fmt_weights(effective(pool())), s, took))
            say(f"{action}: effective {_fmt_weights(expect)} (in effect after {took:.1f}s); "
                f"{s['ok']} ok / {s['errors']} errors, by version {s['by_version']}, "
                f"p50 {_ms(s['p50'])} p95 {_ms(s['p95'])}")

        phase("start", {"sum-v1": 100})
        for w in (5, 50):
            phase(f"canary sum-v2 {w}%", {"sum-v1": 100 - w, "sum-v2": w},
                  "canary", "set", "wp/demo", "--task", TASK, "--to", "sum-v2", "--weight", str(w))
        phase("promote sum-v2", {"sum-v2": 100}, "promote", "wp/demo", "--task", TASK, "--to", "sum-v2")
        phase("rollback to rev 1", {"sum-v1": 100}, "rollback", "wp/demo", "--to-revision", "1")
        traffic.stop()
        bad = [r for r in traffic.responses if r.status == 200 and r.adapter not in r.loaded]
        print()
        print(plugin(kube, ns, "history", "wp/demo"))
        print(f"{'time':>7}  {'action':<20} {'effective weights':<22} {'in effect':>9}  {'ok':>4} {'err':>4}  "
              f"{'responses by version':<24} {'p50':>6} {'p95':>6}")
        for t, action, weights, s, took in rows:
            byv = " ".join(f"{a}:{n}" for a, n in sorted(s["by_version"].items()))
            print(f"{t:6.1f}s  {action:<20} {weights:<22} {took:8.1f}s  {s['ok']:>4} {s['errors']:>4}  {byv:<24} "
                  f"{_ms(s['p50']):>6} {_ms(s['p95']):>6}")
        total = len(traffic.responses)
        print(f"\n{total} responses; served by a version the worker had not loaded: {len(bad)}; "
              f"total {time.monotonic() - t_start:.0f}s")
        return 0 if not bad else 1
    except KeyboardInterrupt:
        say("interrupted; cleaning up")
        return 130
    except Exception as e:  # noqa: BLE001 - report, then clean up
        say(f"demo failed: {e}")
        if operator is not None:
            print(operator.tail(30), file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not skip the cleanup
        for stop in (lambda: traffic and traffic.stop(), lambda: runner and runner.stop(),
                     lambda: operator and operator.stop(), lambda: cluster and cluster.stop()):
            try:
                stop()
            except Exception as e:  # noqa: BLE001
                print(f"cleanup: {e}", file=sys.stderr)
        if tmp is not None:
            tmp.cleanup()
        signal.signal(signal.SIGINT, signal.default_int_handler)
