"""The operator logs kopf in by the kubelet's KUBERNETES_SERVICE_* env, as
client-go does, not by the DNS name kopf's own handler uses."""

from __future__ import annotations

import kopf

from loraplane.operator.controllers.in_cluster import in_cluster_server, login_with_service_account


def test_server_comes_from_the_kubelets_env():
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}) == \
        "https://10.0.0.1:443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "6443"}) == \
        "https://[fd00::1]:6443"
    assert in_cluster_server({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) is None


def test_login_reads_token_ca_and_namespace(tmp_path):
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text("loraplane-system")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    info = login_with_service_account(settings=kopf.OperatorSettings(), env=env, sa_dir=tmp_path)
    assert info.server == "https://10.0.0.1:443"
    assert info.token == "tok-1" and info.ca_path == str(tmp_path / "ca.crt")
    assert info.default_namespace == "loraplane-system"
    (tmp_path / "token").write_text("tok-2")  # a rotated projected token is read at the next login
    assert login_with_service_account(settings=kopf.OperatorSettings(), env=env, sa_dir=tmp_path).token == "tok-2"


def test_without_the_env_it_falls_back_to_kopfs_handler(tmp_path):
    (tmp_path / "token").write_text("tok")
    # No KUBERNETES_SERVICE_* and no real service account here: kopf's handler returns None.
    assert login_with_service_account(settings=kopf.OperatorSettings(), env={}, sa_dir=tmp_path) is None
