"""Certificates and keys for a loopback control plane, made with openssl.

Why openssl: it is on every Debian machine, so the harness needs no extra
Python dependency before the cluster can start. Like envtest, one CA signs
the API server's serving certificate and an admin client certificate in the
``system:masters`` group (which RBAC always allows); the other components
use the admin kubeconfig. A separate RSA key pair signs service-account
tokens.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SERVICE_IP = "10.0.0.1"  # first address of the service CIDR used by the launcher


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path
    # The API server's client certificate towards kubelets (logs, exec):
    # in system:masters, so the kubelet's webhook authorizer allows it.
    kubelet_client_cert: Path | None = None
    kubelet_client_key: Path | None = None


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _signed(cwd: Path, name: str, subject: str, ext: str) -> None:
    (cwd / f"{name}.ext").write_text(ext)
    _openssl("genrsa", "-out", f"{name}.key", "2048", cwd=cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=cwd)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "3650", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        cwd=cwd,
    )


CLIENT_EXT = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n"


def apiserver_sans(extra_ips: tuple[str, ...] = ()) -> str:
    ips = ["127.0.0.1", SERVICE_IP, *[ip for ip in extra_ips if ip not in ("127.0.0.1", SERVICE_IP)]]
    return ",".join([f"IP:{ip}" for ip in ips] + [
        "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"])


def make_pki(directory: Path, extra_ips: tuple[str, ...] = ()) -> Pki:
    """Create (or reuse) every certificate and key under ``directory``.

    ``extra_ips`` go into the serving certificate's SANs (the VM address the
    API server advertises to pods); a certificate made for other SANs is
    made again.
    """
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    if not (d / "ca.crt").exists():
        _openssl("genrsa", "-out", "ca.key", "2048", cwd=d)
        _openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=loraplane-devcluster-ca",
            "-days", "3650", "-sha256", "-out", "ca.crt",
            cwd=d,
        )
    sans = apiserver_sans(extra_ips)
    sans_file = d / "apiserver.sans"
    if not (d / "apiserver.crt").exists() or not sans_file.exists() or sans_file.read_text() != sans:
        _signed(d, "apiserver", "/CN=kube-apiserver",
                f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
        sans_file.write_text(sans)
    if not (d / "admin.crt").exists():
        _signed(d, "admin", "/O=system:masters/CN=loraplane-admin", CLIENT_EXT)
    if not (d / "apiserver-kubelet-client.crt").exists():
        _signed(d, "apiserver-kubelet-client", "/O=system:masters/CN=kube-apiserver-kubelet-client", CLIENT_EXT)
    if not (d / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    return Pki(
        ca_cert=d / "ca.crt", ca_key=d / "ca.key",
        serving_cert=d / "apiserver.crt", serving_key=d / "apiserver.key",
        admin_cert=d / "admin.crt", admin_key=d / "admin.key",
        sa_key=d / "sa.key", sa_pub=d / "sa.pub",
        kubelet_client_cert=d / "apiserver-kubelet-client.crt",
        kubelet_client_key=d / "apiserver-kubelet-client.key",
    )


def client_cert(directory: Path, name: str, subject: str) -> tuple[Path, Path]:
    """A client certificate signed by the cluster CA in ``directory`` (made
    once): ``subject`` like ``/O=system:nodes/CN=system:node:NAME``."""
    if not (directory / f"{name}.crt").exists():
        _signed(directory, name, subject, CLIENT_EXT)
    return directory / f"{name}.crt", directory / f"{name}.key"


def node_identity(directory: Path, node_name: str) -> tuple[Path, Path]:
    """The kubelet's identity under the Node authorizer and NodeRestriction."""
    return client_cert(directory, f"node-{node_name}", f"/O=system:nodes/CN=system:node:{node_name}")


def kube_proxy_identity(directory: Path) -> tuple[Path, Path]:
    """CN=system:kube-proxy: the default ClusterRoleBinding system:node-proxier covers it."""
    return client_cert(directory, "kube-proxy", "/CN=system:kube-proxy")


def kubeconfig_yaml(server: str, pki: Pki, name: str = "loraplane-dev",
                    cert: Path | None = None, key: Path | None = None) -> str:
    """A kubeconfig (admin unless ``cert``/``key`` are given); plain text so
    kubectl and every client read it."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: {server}
    certificate-authority: {pki.ca_cert}
users:
- name: {name}-admin
  user:
    client-certificate: {cert or pki.admin_cert}
    client-key: {key or pki.admin_key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}-admin
    namespace: default
current-context: {name}
"""
