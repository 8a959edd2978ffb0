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


def make_pki(directory: Path) -> Pki:
    """Create (or reuse) every certificate and key under ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    d = directory
    if not (d / "ca.crt").exists():
        _openssl("genrsa", "-out", "ca.key", "2048", cwd=d)
        _openssl(
            "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=loraplane-devcluster-ca",
            "-days", "3650", "-sha256", "-out", "ca.crt",
            cwd=d,
        )
    if not (d / "apiserver.crt").exists():
        sans = ",".join(
            ["IP:127.0.0.1", f"IP:{SERVICE_IP}", "DNS:localhost", "DNS:kubernetes", "DNS:kubernetes.default",
             "DNS:kubernetes.default.svc", "DNS:kubernetes.default.svc.cluster.local"]
        )
        _signed(d, "apiserver", "/CN=kube-apiserver",
                f"basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                f"extendedKeyUsage=serverAuth\nsubjectAltName={sans}\n")
    if not (d / "admin.crt").exists():
        _signed(d, "admin", "/O=system:masters/CN=loraplane-admin",
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n")
    if not (d / "sa.key").exists():
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    return Pki(
        ca_cert=d / "ca.crt", ca_key=d / "ca.key",
        serving_cert=d / "apiserver.crt", serving_key=d / "apiserver.key",
        admin_cert=d / "admin.crt", admin_key=d / "admin.key",
        sa_key=d / "sa.key", sa_pub=d / "sa.pub",
    )


def kubeconfig_yaml(server: str, pki: Pki, name: str = "loraplane-dev") -> str:
    """An admin kubeconfig; plain text so kubectl and every client read it."""
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
    client-certificate: {pki.admin_cert}
    client-key: {pki.admin_key}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}-admin
    namespace: default
current-context: {name}
"""
