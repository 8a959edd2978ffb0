"""``loraplane dev-cluster up|down|kubeconfig|status|build``.

``up`` builds what is missing, starts the control plane detached under
``~/.cache/loraplane/dev-cluster`` (or ``--dir``), creates fake RTX 3090
nodes and prints the kubeconfig path; ``down`` stops it. The same launcher
backs the pytest ``dev_cluster`` fixture. ``up --real-node`` also joins a
real kubelet node (``realnode.py``), detached; ``down`` removes it first.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from . import build
from .cluster import DevCluster


def default_dir() -> Path:
    return build.cache_root() / "dev-cluster"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["up", "down", "kubeconfig", "status", "build"])
    parser.add_argument("--dir", type=Path, default=None, help="state directory (default: %(default)s)")
    parser.add_argument("--nodes", type=int, default=2, help="fake RTX 3090 nodes to create on up")
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--real-node", action="store_true",
                        help="also join a real kubelet node (containerd + runc), labelled like a GPU node")


def run(args: argparse.Namespace) -> int:
    workdir = (args.dir or default_dir()).resolve()
    state = workdir / "state.json"
    if args.action == "build":
        build.build()
        if args.real_node:
            from . import node_build

            node_build.build_node()
        return 0
    if args.action == "up":
        if state.exists() and DevCluster.attach(workdir).running():
            print(f"already running; kubeconfig: {workdir / 'kubeconfig'}")
            return 0
        build.build()
        if args.real_node:
            from . import node_build

            node_build.build_node()
        if workdir.exists():
            shutil.rmtree(workdir)  # stale state from a crashed run
        cluster = DevCluster(workdir=workdir, detached=True).start()
        nodes = cluster.create_gpu_nodes(args.nodes, gpus_per_node=args.gpus_per_node)
        if args.real_node:
            from .realnode import RealNode

            try:
                real = RealNode(cluster, detached=True).start()
            except BaseException:
                cluster.stop()
                raise
            nodes.append(f"{real.name} (real, {real.timings['ready']} s to Ready)")
        print(f"control plane up: {cluster.server}; nodes: {', '.join(nodes)}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        return 0
    if not state.exists():
        print(f"no dev cluster recorded in {workdir}")
        return 1 if args.action in ("kubeconfig", "status") else 0
    cluster = DevCluster.attach(workdir)
    if args.action == "down":
        from .realnode import RealNode

        real = RealNode.attach(cluster)
        if real is not None:
            real.stop()
            print(f"real node {real.name} removed")
        cluster.stop()
        print("control plane stopped")
        return 0
    if args.action == "kubeconfig":
        print(cluster.kubeconfig)
        return 0
    print(json.dumps({"running": cluster.running(), "server": cluster.server, "pids": cluster.pids,
                      "kubeconfig": str(cluster.kubeconfig)}, indent=2))
    return 0 if cluster.running() else 1
