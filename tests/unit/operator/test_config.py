"""Operator settings from env vars (the chart's Deployment) and flags."""

from __future__ import annotations

import argparse

import pytest

from loraplane.operator.controllers import config


def parse(monkeypatch, env: dict, argv: list[str] | None = None) -> config.Config:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    p = argparse.ArgumentParser()
    config.add_arguments(p)
    return config.from_args(p.parse_args(argv or []))


def test_pull_settings_and_liveness_from_the_env(monkeypatch):
    cfg = parse(monkeypatch, {"LORAPLANE_IMAGE_PULL_POLICY": "Never",
                              "LORAPLANE_IMAGE_PULL_SECRETS": "regcred, other ,",
                              "LORAPLANE_LIVENESS": "http://0.0.0.0:8081/healthz"})
    assert cfg.image_pull_policy == "Never" and cfg.image_pull_secrets == ["regcred", "other"]
    assert cfg.liveness_endpoint == "http://0.0.0.0:8081/healthz"


def test_defaults_leave_pull_settings_to_the_cluster(monkeypatch):
    for k in ("LORAPLANE_IMAGE_PULL_POLICY", "LORAPLANE_IMAGE_PULL_SECRETS", "LORAPLANE_LIVENESS"):
        monkeypatch.delenv(k, raising=False)
    cfg = parse(monkeypatch, {})
    assert cfg.image_pull_policy is None and cfg.image_pull_secrets == [] and cfg.liveness_endpoint is None


def test_an_unknown_pull_policy_is_refused(monkeypatch):
    with pytest.raises(SystemExit):
        parse(monkeypatch, {}, ["--image-pull-policy", "Sometimes"])
