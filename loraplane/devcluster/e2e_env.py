"""Where the e2e suite runs: one interface, two clusters.

The e2e tests (tests/e2e) install the chart and drive loraplane only through
what a user has: a kubeconfig, ``kubectl``, ``helm``, images the nodes can
run, and a directory the nodes see as the ModelStore. Two environments give
them that:

* ``LocalEnv`` — this machine: the dev control plane built from Go modules,
  a REAL kubelet + containerd node (``RealNode``), images built with buildah
  and imported into that containerd. The host reaches Service ClusterIPs
  through kube-proxy's iptables rules.
* ``KindEnv`` — a kind cluster where Docker runs: images built with
  ``docker build`` and ``kind load``-ed; the store is a host directory that
  the kind config mounts into the node (tests/kind/kind-config.yaml); a
  Service is reached through ``kubectl port-forward``.

Nothing here knows about loraplane's resources: the tests do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import build

# uid/gid of the images' user: the store directory must be theirs, since
# training Jobs publish into it and PV hostPath directories keep host owners.
IMAGE_UID = 10001
CHART = Path(__file__).resolve().parents[2] / "charts" / "loraplane"


@dataclass
class E2EEnv:
    """What the e2e tests need from a cluster, whatever runs it."""

    kubeconfig: Path
    images: dict[str, str]  # "operator" / "worker" -> image reference the nodes have
    store_dir: Path  # the ModelStore as this process writes it
    store_node_path: str  # the same directory as the node sees it (a PV's hostPath)
    gpu_node: str  # the node labelled like a GPU node, where workers run
    pull_policy: str = "IfNotPresent"
    chart: Path = CHART
    env: dict[str, str] = field(default_factory=dict)

    def prepare_store(self) -> None:
        """Hand the store to the images' user (training Jobs publish into it)."""
        prepare_store_dir(self.store_dir)

    def node_containers(self) -> list[str]:
        """Pod containers still running on the GPU node (overridden per environment)."""
        return []

    def _tool(self, tool: str) -> str:
        local = build.bin_dir() / tool
        return str(local) if local.exists() else (shutil.which(tool) or tool)

    def run(self, tool: str, *args: str, input: str | None = None, check: bool = True,
            timeout: float = 180) -> subprocess.CompletedProcess:
        # kubectl finds the ``kubectl-loraplane`` plugin next to this interpreter.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        env = {**os.environ, "PATH": path, "KUBECONFIG": str(self.kubeconfig), **self.env}
        proc = subprocess.run([self._tool(tool), *args], input=input, capture_output=True, text=True,
                              timeout=timeout, env=env)
        if check and proc.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("kubectl", *args, **kw)

    def helm(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("helm", *args, **kw)

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, namespace: str, *docs: dict) -> None:
        self.kubectl("apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))

    @contextlib.contextmanager
    def service_url(self, namespace: str, service: str, port: int = 80) -> Iterator[str]:
        """An http:// URL that reaches ``service`` the way in-cluster clients do."""
        svc = self.get_json("service", service, "-n", namespace)
        yield f"http://{svc['spec']['clusterIP']}:{port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class KindEnv(E2EEnv):
    """A kind cluster: the host cannot route to ClusterIPs, so port-forward."""

    @contextlib.contextmanager
    def service_url(self, namespace: str, service: str, port: int = 80) -> Iterator[str]:
        local = _free_port()
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.Popen([self._tool("kubectl"), "port-forward", "-n", namespace, f"svc/{service}",
                                 f"{local}:{port}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", local), timeout=1):
                    break
                time.sleep(0.2)
            yield f"http://127.0.0.1:{local}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def prepare_store_dir(path: Path) -> Path:
    """A store directory the images' user may read and publish into."""
    path.mkdir(parents=True, exist_ok=True)
    for p in [path, *path.rglob("*")]:
        os.chown(p, IMAGE_UID, IMAGE_UID, follow_symlinks=False)
    return path


@dataclass
class LocalEnv(E2EEnv):
    """This machine: the dev control plane and a real kubelet node."""

    node: object | None = None  # the RealNode

    def node_containers(self) -> list[str]:
        """Running containers of pods (not the node's own), from containerd itself."""
        out = self.node.ctr("containers", "list", "-q", check=False).stdout  # type: ignore[union-attr]
        return [line for line in out.split() if line]


@contextlib.contextmanager
def local_env(workdir: Path) -> Iterator[LocalEnv]:
    """Build (or reuse) the images, start a control plane and a real node,
    import the images into the node's containerd; tear all of it down after."""
    from .cluster import DevCluster
    from .images import build_images
    from .realnode import RealNode

    built = build_images(("operator", "worker"))
    with DevCluster(workdir=workdir / "cluster") as cluster, RealNode(cluster) as node:
        _remove_stale_images(node, {b.ref for b in built.values()})  # first: disk for the new ones
        for image in built.values():
            node.import_image(image.archive)
        store = workdir / "store"
        yield LocalEnv(kubeconfig=cluster.kubeconfig, images={n: b.ref for n, b in built.items()},
                       store_dir=store, store_node_path=str(store), gpu_node=node.name,
                       pull_policy="Never", node=node)


def _remove_stale_images(node, keep: set[str]) -> None:
    """Older builds of the project's images leave the node's containerd
    (several GB each for the worker); its garbage collector frees the blobs."""
    repos = {ref.rsplit(":", 1)[0] for ref in keep}  # only these images' older tags; never pause/base
    stale = [ref for ref in node.images() if ref.rsplit(":", 1)[0] in repos and ref not in keep]
    if stale:
        node.ctr("images", "rm", *stale, check=False)


@contextlib.contextmanager
def kind_env() -> Iterator[KindEnv]:
    """An existing kind cluster (``KIND_KUBECONFIG``, ``KIND_CLUSTER``, made
    with tests/kind/kind-config.yaml): images built with Docker and loaded
    with ``kind load``; its first node is labelled as a GPU node."""
    from .images import build_images
    from .nodes import advertise_fake_gpus

    kubeconfig = Path(os.environ["KIND_KUBECONFIG"])
    cluster = os.environ.get("KIND_CLUSTER", "kind")
    built = build_images(("operator", "worker"))
    for image in built.values():
        subprocess.run(["kind", "load", "docker-image", image.ref, "--name", cluster], check=True)
    store = Path(os.environ.get("LORAPLANE_KIND_STORE", "/tmp/loraplane-e2e-store"))
    env = KindEnv(kubeconfig=kubeconfig, images={n: b.ref for n, b in built.items()}, store_dir=store,
                  store_node_path="/var/lib/loraplane-store", gpu_node="", pull_policy="IfNotPresent")
    env.gpu_node = env.get_json("nodes")["items"][0]["metadata"]["name"]
    advertise_fake_gpus(lambda *a: env.kubectl(*a), env.gpu_node, gpus=2)
    yield env
