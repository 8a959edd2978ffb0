"""Pinned versions of the control-plane components built from Go modules.

One place so the build script, the launcher and docs/testing.md agree.
Bumping KUBERNETES_VERSION bumps every k8s.io staging module with it
(v1.X.Y -> v0.X.Y), which is how upstream publishes them.
"""

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.3"
KWOK_VERSION = "v0.8.0"
# The real node's container runtime (module github.com/containerd/containerd/v2);
# why v2 and not Debian's 1.6: see node_build.py.
CONTAINERD_VERSION = "v2.4.2"
# Not part of the control plane: renders and lints the chart in tests.
HELM_VERSION = "v3.22.0"
PROMETHEUS_MODULE_VERSION = "v0.316.0"  # Prometheus 3.16.0: prometheus + promtool (prom_build.py)


def staging_version(kubernetes_version: str = KUBERNETES_VERSION) -> str:
    """k8s.io staging modules are tagged v0.X.Y for Kubernetes v1.X.Y."""
    major, minor, patch = kubernetes_version.lstrip("v").split(".")
    assert major == "1", kubernetes_version
    return f"v0.{minor}.{patch}"


def cache_key() -> str:
    """Directory name under the cache: changes whenever any pin changes."""
    return f"{KUBERNETES_VERSION}-etcd{ETCD_VERSION}-kwok{KWOK_VERSION}"
