"""Log kopf in with the pod's ServiceAccount the way client-go does.

kopf's own ``login_with_service_account`` talks to
``https://kubernetes.default.svc``: a DNS name, so the operator cannot reach
the API server on a cluster whose DNS is down, slow to start, or absent
(caught by the e2e suite on a real kubelet, where kopf retried
``ClientConnectorDNSError`` while its liveness endpoint kept answering 200).
client-go's ``rest.InClusterConfig`` and the Python client's
``load_incluster_config`` — which the operator's own API calls use — read
``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` that the kubelet puts
into every pod. This does the same for kopf, so both clients of the
operator reach the same endpoint. The token file is re-read at every login:
projected tokens rotate, and kopf logs in again on a 401.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import kopf

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster_server(env: Mapping[str, str]) -> str | None:
    """``https://host:port`` from the kubelet's env; IPv6 hosts bracketed."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        return None
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def login_with_service_account(*, settings: kopf.OperatorSettings, env: Mapping[str, str] | None = None,
                               sa_dir: Path = SERVICE_ACCOUNT_DIR, **kwargs: Any) -> kopf.ConnectionInfo | None:
    """A kopf login handler: the pod's token and CA, the server by IP from env."""
    server = in_cluster_server(os.environ if env is None else env)
    token_path = sa_dir / "token"
    if server is None or not token_path.exists():
        return kopf.login_with_service_account(settings=settings, **kwargs)
    namespace = sa_dir / "namespace"
    ca = sa_dir / "ca.crt"
    return kopf.ConnectionInfo(
        server=server,
        ca_path=str(ca) if ca.exists() else None,
        token=token_path.read_text(encoding="utf-8").strip() or None,
        default_namespace=namespace.read_text(encoding="utf-8").strip() if namespace.exists() else None,
        trust_env=settings.networking.trust_env,
    )
