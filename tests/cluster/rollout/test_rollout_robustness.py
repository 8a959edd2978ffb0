"""Rollout robustness against the real API server and the real operator
(issue 12): two rollout commands sent within one pass are both applied, in
order, acknowledged and their annotations removed; the plugin's commands sent
back to back are not lost; a route to an adapter of another task and a canary
that already serves everything give RoutesValid=False with their reason,
Ready=False, and exactly one Event; the API server takes the new fields (drainSeconds, the inconclusive
timeout) with their defaults.

No workers are needed: a pool's routing and rollout state are computed even
while its BaseModel is missing (no pods are planned), and commands act on the
rollout state, not on traffic."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from kubernetes import client, config

from loraplane.demo import OperatorProcess, plugin
from loraplane.devcluster.waiting import wait_for
from loraplane.operator.api.rollout_types import RolloutCommand

GV = ("loraplane.io", "v1alpha1")


def adapter(name: str, task: str) -> dict:
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter", "metadata": {"name": name},
            "spec": {"baseModelRef": "absent", "task": task, "version": "v1", "source": {"storeName": name}}}


def pool(name: str, routes: dict, rollouts: dict | None = None) -> dict:
    spec = {"baseModelRef": "absent", "replicas": 0, "routes": routes}
    if rollouts:
        spec["rollouts"] = rollouts
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def env(dev_cluster, tmp_path_factory):
    from pathlib import Path

    work = tmp_path_factory.mktemp("rollout-robustness")
    ns = f"rollout-{uuid.uuid4().hex[:6]}"
    dev_cluster.kubectl("create", "namespace", ns)
    root = Path(__file__).resolve().parents[3]
    dev_cluster.kubectl("apply", "-f", str(root / "crds"))
    dev_cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    (work / "store").mkdir()
    op = OperatorProcess(dev_cluster.kubeconfig, work / "store", work / "operator.log", resync_seconds=2,
                         extra={"namespace": ns}).start()
    api = client.CustomObjectsApi(config.new_client_from_config(config_file=str(dev_cluster.kubeconfig)))

    class Env:
        cluster, kubeconfig, namespace = dev_cluster, dev_cluster.kubeconfig, ns

        def create(self, obj: dict) -> None:
            api.create_namespaced_custom_object(*GV, ns, obj["kind"].lower() + "s", obj)

        def get(self, name: str) -> dict:
            return api.get_namespaced_custom_object(*GV, ns, "workerpools", name)

        def patch(self, name: str, body: dict) -> None:
            api.patch_namespaced_custom_object(*GV, ns, "workerpools", name, body)

        def events(self, name: str, reason: str) -> list[dict]:
            out = dev_cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                                      f"involvedObject.name={name},reason={reason}", "-o", "json").stdout
            return json.loads(out)["items"]

    try:
        yield Env()
    finally:
        print(op.tail(40))
        op.stop()
        dev_cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def rollout(env, name: str) -> dict:
    return ((env.get(name).get("status") or {}).get("rollouts") or {}).get("t") or {}


def test_commands_sent_within_one_pass_are_all_applied_in_order(env):
    env.create(pool("cmds", {"t": [{"adapter": "a1", "weight": 100}]},
                    {"t": {"canary": "a2", "steps": [10, 50, 100], "intervalSeconds": 3600}}))
    wait_for(lambda: rollout(env, "cmds").get("phase") == "Progressing", timeout=30, what="rollout started")
    spec = env.get("cmds")["spec"]
    assert spec["drainSeconds"] == 60 and spec["rollouts"]["t"]["inconclusiveTimeoutSeconds"] == 3600
    # One patch carrying two commands: whatever the operator's timing, both arrive in the same pass.
    first, second = RolloutCommand.new_id(), RolloutCommand.new_id()
    env.patch("cmds", {"metadata": {"annotations": {
        RolloutCommand.key(first): RolloutCommand(command="promote", task="t").to_annotation(),
        RolloutCommand.key(second): RolloutCommand(command="pause", task="t").to_annotation()}}})
    wait_for(lambda: rollout(env, "cmds").get("phase") == "Paused", timeout=30, what="both commands applied")
    assert rollout(env, "cmds")["canaryWeight"] == 50  # promote, then pause: neither was lost
    wait_for(lambda: not [k for k in env.get("cmds")["metadata"].get("annotations") or {}
                          if k.startswith("rollout-command.")], timeout=30, what="annotations removed")
    wait_for(lambda: not (env.get("cmds").get("status") or {}).get("processedCommands"), timeout=30,
             what="acknowledgements pruned")
    # The plugin, back to back: resume then promote (to 100).
    plugin(env.kubeconfig, env.namespace, "resume", "wp/cmds", "--task", "t")
    plugin(env.kubeconfig, env.namespace, "promote", "wp/cmds", "--task", "t")
    wait_for(lambda: rollout(env, "cmds").get("phase") == "Promoted", timeout=30, what="resume + promote applied")
    assert len(env.events("cmds", "RolloutResumed")) == 1 and len(env.events("cmds", "RolloutPaused")) == 1


@pytest.mark.parametrize("name,routes,rollouts,reason,words", [
    ("mismatch", {"critic": [{"adapter": "sum-v1", "weight": 100}]}, None, "RouteTaskMismatch",
     ["critic", "sum-v1", "summarize"]),
    ("same", {"t": [{"adapter": "a1", "weight": 100}]}, {"t": {"canary": "a1"}}, "CanaryIsStable", ["a1"]),
])
def test_semantic_route_problems_give_a_condition_and_one_event(env, name, routes, rollouts, reason, words):
    if name == "mismatch":
        env.create(adapter("sum-v1", "summarize"))
    env.create(pool(name, routes, rollouts))

    def cond(type_):
        return next((c for c in (env.get(name).get("status") or {}).get("conditions") or []
                     if c["type"] == type_), {})
    wait_for(lambda: cond("RoutesValid").get("reason") == reason, timeout=30, what=f"RoutesValid reason {reason}")
    time.sleep(5)  # more passes (resync 2 s): still one Event
    valid = cond("RoutesValid")
    assert valid["status"] == "False" and all(w in valid["message"] for w in words), valid
    assert cond("Ready")["status"] == "False"  # here for its missing BaseModel first; never True
    assert len(env.events(name, reason)) == 1
    assert len(env.events(name, "BaseModelMissing")) == 1  # the pool's own Event is not repeated either
