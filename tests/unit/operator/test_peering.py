"""Peering settings for replicas > 1: kopf pauses every operator that sees a
live peer of equal priority, so each replica must get its own priority
(by seniority unless set), and the keep-alive lifetime bounds the takeover."""

from __future__ import annotations

import argparse
import asyncio

import kopf

from loraplane.operator.cli.run import operator_kwargs
from loraplane.operator.controllers import config


def cfg_of(monkeypatch, argv: list[str], env: dict | None = None) -> config.Config:
    for k in ("LORAPLANE_PEERING", "LORAPLANE_PEERING_PRIORITY", "LORAPLANE_PEERING_LIFETIME"):
        monkeypatch.delenv(k, raising=False)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return config.from_args(p.parse_args(argv))


def test_an_older_replica_has_the_higher_priority():
    assert config.seniority_priority(1_700_000_000.9, 999_999) > config.seniority_priority(1_700_000_001.0, 0)
    assert config.seniority_priority(1_700_000_000.0, 1) != config.seniority_priority(1_700_000_000.0, 2)
    assert abs(config.seniority_priority(9_000_000_000.0, 999_999)) < 2 ** 53  # exact in every JSON reader


def test_two_replicas_started_with_the_same_flags_get_distinct_priorities(monkeypatch):
    cfg = cfg_of(monkeypatch, [], {"LORAPLANE_PEERING": "loraplane"})
    a, b = (operator_kwargs(cfg, kopf, kopf.OperatorRegistry())["priority"] for _ in range(2))
    assert a != b  # same second: told apart by the random part (1 in 10**6 to collide)


def test_priority_and_lifetime_from_flags_or_env(monkeypatch):
    cfg = cfg_of(monkeypatch, ["--peering", "lp", "--peering-priority", "7"], {"LORAPLANE_PEERING_LIFETIME": "9"})
    assert (cfg.peering, cfg.peering_priority, cfg.peering_lifetime) == ("lp", 7, 9)
    registry = kopf.OperatorRegistry()
    kwargs = operator_kwargs(cfg, kopf, registry)
    assert kwargs["priority"] == 7 and kwargs["peering_name"] == "lp" and not kwargs["standalone"]
    settings = kopf.OperatorSettings()
    for handler in registry._activities.get_all_handlers():  # noqa: SLF001 - the one startup handler added
        result = handler.fn(settings=settings)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    assert settings.peering.lifetime == 9


def test_watched_namespaces_peer_through_namespaced_kopfpeerings(monkeypatch):
    cfg = cfg_of(monkeypatch, ["--peering", "lp", "--namespace", "a", "--namespace", "b"])
    kwargs = operator_kwargs(cfg, kopf, kopf.OperatorRegistry())
    assert kwargs["namespaces"] == ["a", "b"] and "clusterwide" not in kwargs
    cluster = operator_kwargs(cfg_of(monkeypatch, ["--peering", "lp"]), kopf, kopf.OperatorRegistry())
    assert cluster["clusterwide"] is True and "namespaces" not in cluster


def test_standalone_has_no_priority(monkeypatch):
    kwargs = operator_kwargs(cfg_of(monkeypatch, []), kopf, kopf.OperatorRegistry())
    assert kwargs["standalone"] is True and "priority" not in kwargs
