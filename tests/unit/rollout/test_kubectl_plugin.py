import json

import pytest

from loraplane.operator.cli import kubectl_plugin as kp
from loraplane.operator.api.rollout_types import CHANGE_CAUSE_ANNOTATION, COMMAND_PREFIX, RolloutCommand, commands_of

POOL = {
    "metadata": {"name": "chat"},
    "spec": {"replicas": 2, "routes": {"summarize": [{"adapter": "sum-v1", "weight": 100}],
                                       "critic": [{"adapter": "crit-v1", "weight": 90}, {"adapter": "crit-v2", "weight": 10}]}},
    "status": {
        "readyReplicas": 2,
        "routes": [{"task": "summarize", "pending": True, "backends": [
            {"adapter": "sum-v1", "desired": 95, "effective": 100, "loadedOn": "2/2"},
            {"adapter": "sum-v2", "desired": 5, "effective": 0, "loadedOn": "1/2"}]}],
        "rollouts": {"summarize": {"canary": "sum-v2", "phase": "Progressing", "canaryWeight": 5, "stepIndex": 0,
                                   "lastTransition": "2025-01-01T00:00:00+00:00", "message": "waiting"}},
        "revisions": [
            {"revision": 1, "time": "t1", "routes": {"summarize": [{"adapter": "sum-v1", "weight": 100}]}, "cause": "created"},
            {"revision": 2, "time": "t2", "stable": False, "cause": "edit",
             "routes": {"summarize": [{"adapter": "sum-v1", "weight": 50}, {"adapter": "sum-v2", "weight": 50}],
                        "critic": [{"adapter": "crit-v1", "weight": 100}]}},
        ],
    },
}


def test_pool_name():
    assert kp.pool_name("wp/chat") == "chat" == kp.pool_name("chat") == kp.pool_name("workerpool/chat")
    with pytest.raises(ValueError):
        kp.pool_name("deploy/chat")


def test_canary_routes_keeps_rest_on_stable():
    route = [{"adapter": "v1", "weight": 90}, {"adapter": "v2", "weight": 10}]
    assert kp.canary_routes(route, "v3", 5) == [{"adapter": "v1", "weight": 95}, {"adapter": "v3", "weight": 5}]
    assert kp.canary_routes(route, "v2", 50) == [{"adapter": "v1", "weight": 50}, {"adapter": "v2", "weight": 50}]
    assert kp.canary_routes(route, "v2", 100) == [{"adapter": "v2", "weight": 100}]
    assert kp.canary_routes(route, "v2", 0) == [{"adapter": "v1", "weight": 100}]
    with pytest.raises(ValueError):
        kp.canary_routes([{"adapter": "v1", "weight": 100}], "v1", 50)
    with pytest.raises(ValueError):
        kp.canary_routes(route, "v2", 101)


def test_rollback_patch_restores_previous_revision_exactly_and_deletes_extra_tasks():
    routes, rev = kp.previous_routes(POOL, None)
    assert rev == 1
    patch = kp.routes_patch(routes, POOL["spec"]["routes"], "rollback")
    assert patch["spec"]["routes"] == {"summarize": [{"adapter": "sum-v1", "weight": 100}], "critic": None}
    assert patch["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION] == "rollback"
    with pytest.raises(ValueError, match="kept"):
        kp.previous_routes(POOL, 7)


def test_command_patch_adds_one_annotation_per_command():
    p = kp.command_patch("pause", "summarize", command_id="20260101T000000000000-abcdef01")
    ((key, value),) = p["metadata"]["annotations"].items()
    assert key == f"{COMMAND_PREFIX}/20260101T000000000000-abcdef01"
    cmd = RolloutCommand.parse(key.split("/", 1)[1], value)
    assert (cmd.command, cmd.task, cmd.id) == ("pause", "summarize", "20260101T000000000000-abcdef01")
    a, b = kp.command_patch("pause", "x"), kp.command_patch("resume", "x")
    both = {**a["metadata"]["annotations"], **b["metadata"]["annotations"]}  # two patches: neither overwrites
    assert [c.command for _, c in commands_of(both)] == ["pause", "resume"]
    with pytest.raises(ValueError, match="unknown rollout command"):
        RolloutCommand.parse("x", '{"command":"explode","task":"x"}')


def test_promote_routes_manual_and_rollout_detection():
    assert kp.promote_routes(POOL, "critic", None) == [{"adapter": "crit-v2", "weight": 100}]
    assert kp.rollout_active(POOL, "summarize") and not kp.rollout_active(POOL, "critic")


def test_tables_render():
    s = kp.render_status(POOL)
    assert "sum-v2" in s and "1/2" in s and "pending" in s and "Progressing" in s
    assert "not reconciled" in s  # critic has no status.routes entry yet
    h = kp.render_history(POOL).splitlines()
    assert h[0].split() == ["REVISION", "TIME", "STABLE", "ROUTES", "CAUSE"]
    assert "critic: crit-v1=100; summarize: sum-v1=50 sum-v2=50" in h[2]


def test_main_reports_bad_reference_without_traceback(capsys, monkeypatch):
    monkeypatch.setattr(kp, "_api", lambda args: None)
    assert kp.main(["status", "deploy/x"]) == 2
    assert "not a WorkerPool reference" in capsys.readouterr().err
