"""Operator settings: command-line flags with environment fallbacks, so the
same binary runs from a laptop (``--kubeconfig``) and from the chart's
Deployment (env vars)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field



def _version() -> str:
    try:
        from importlib.metadata import version
        return version("loraplane")
    except Exception:  # noqa: BLE001 - not installed: a dev tree
        return "dev"


DEFAULT_IMAGE = f"ghcr.io/loraplane/worker:{_version()}"


@dataclass
class Config:
    worker_image: str = DEFAULT_IMAGE
    job_image: str | None = None  # default: worker_image (it ships the loraplane CLI)
    store_root: str | None = None  # where the operator itself sees the store, if mounted
    job_pod_annotations: dict[str, str] = field(default_factory=dict)
    resync_seconds: float = 30.0
    backoff_base_seconds: float = 5.0
    backoff_max_seconds: float = 300.0
    namespaces: list[str] = field(default_factory=list)  # empty: all
    metrics_port: int = 8080
    peering: str | None = None  # kopf peering object name; None: standalone
    #: kopf peering priority (the highest live one is active); None: by seniority (``seniority_priority``)
    peering_priority: int | None = None
    peering_lifetime: int = 60  # seconds a peer's keep-alive counts; a killed active replica is replaced after it
    kubeconfig: str | None = None
    workload_cluster_role: str | None = None  # bound to loraplane-workload in each namespace used
    create_delay_seconds: float = 0.0  # fault injection: pause after each pod create (restart tests)
    image_pull_policy: str | None = None  # on every container the operator creates; None: the cluster's default
    image_pull_secrets: list[str] = field(default_factory=list)  # Secret names; must exist in each workload namespace
    liveness_endpoint: str | None = None  # kopf's health endpoint, e.g. http://0.0.0.0:8081/healthz

    @property
    def image_for_jobs(self) -> str:
        return self.job_image or self.worker_image

    def backoff(self, attempts: int) -> float:
        """Exponential retry delay after ``attempts`` failures (capped)."""
        return min(self.backoff_max_seconds, self.backoff_base_seconds * (2 ** max(0, attempts - 1)))


def seniority_priority(started: float, tie_break: int) -> int:
    """A kopf peering priority that makes the longest-running replica the active one.

    kopf pauses every operator that sees a live peer of *equal* priority, so
    replicas of one Deployment (same flags) must differ. Older = higher: a
    replica that (re)starts joins as standby and never interrupts the active
    one; when the active one dies, the next oldest takes over once its
    keep-alive expires. ``started`` in seconds (epoch), ``tie_break`` in
    0..999999 (random) orders replicas started within the same second (two
    of them collide with odds of one in a million). The value stays within
    2**53 (a JSON number every client reads exactly) until the year 2255.
    """
    return -(int(started) * 1_000_000 + tie_break % 1_000_000)


def _kv(text: str) -> dict[str, str]:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return {str(k): str(v) for k, v in json.loads(text).items()}
    return dict(item.split("=", 1) for item in text.split(","))


def add_arguments(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    p.add_argument("--kubeconfig", default=env("KUBECONFIG"), help="default: $KUBECONFIG or in-cluster")
    p.add_argument("--worker-image", default=env("LORAPLANE_WORKER_IMAGE", DEFAULT_IMAGE))
    p.add_argument("--job-image", default=env("LORAPLANE_JOB_IMAGE"))
    p.add_argument("--store-root", default=env("MODEL_STORE_ROOT"),
                   help="the ModelStore as mounted in the operator (optional; see docs/operator.md)")
    p.add_argument("--job-pod-annotations", default=env("LORAPLANE_JOB_POD_ANNOTATIONS", ""),
                   help="k=v,k2=v2 or JSON: annotations for Job pod templates")
    p.add_argument("--namespace", action="append", default=None,
                   help="watch only these namespaces (repeatable; default: all)")
    p.add_argument("--resync-seconds", type=float, default=float(env("LORAPLANE_RESYNC_SECONDS", "30")))
    p.add_argument("--backoff-base-seconds", type=float, default=float(env("LORAPLANE_BACKOFF_BASE", "5")))
    p.add_argument("--metrics-port", type=int, default=int(env("LORAPLANE_METRICS_PORT", "8080")),
                   help="Prometheus /metrics port (0: off)")
    p.add_argument("--peering", default=env("LORAPLANE_PEERING"),
                   help="kopf peering name for one active instance (default: standalone)")
    p.add_argument("--peering-priority", type=int,
                   default=int(env("LORAPLANE_PEERING_PRIORITY")) if env("LORAPLANE_PEERING_PRIORITY") else None,
                   help="kopf peering priority, the highest live one is active (default: by seniority, the oldest "
                        "replica wins; replicas must never share one, kopf would pause them all)")
    p.add_argument("--peering-lifetime", type=int, default=int(env("LORAPLANE_PEERING_LIFETIME", "60")),
                   help="seconds a peer's keep-alive is valid: a standby takes over that long after the active "
                        "replica dies without a goodbye (SIGKILL, node loss)")
    p.add_argument("--workload-cluster-role", default=env("LORAPLANE_WORKLOAD_CLUSTERROLE"),
                   help="ClusterRole bound to the loraplane-workload ServiceAccount of worker and training pods "
                        "in each namespace used (the chart sets it; see operator/core/workload_identity.py)")
    p.add_argument("--create-delay-seconds", type=float, default=float(env("LORAPLANE_CREATE_DELAY", "0")),
                   help="fault injection: sleep after each worker pod create (to kill the operator mid-pass)")
    p.add_argument("--image-pull-policy", default=env("LORAPLANE_IMAGE_PULL_POLICY") or None,
                   choices=["Always", "IfNotPresent", "Never"],
                   help="imagePullPolicy of worker pods and Jobs (default: the cluster's, by image tag)")
    p.add_argument("--image-pull-secrets", default=env("LORAPLANE_IMAGE_PULL_SECRETS", ""),
                   help="comma-separated Secret names for imagePullSecrets of worker pods and Jobs; each Secret "
                        "must exist in every namespace where they run")
    p.add_argument("--liveness", default=env("LORAPLANE_LIVENESS") or None, metavar="URL",
                   help="serve kopf's liveness endpoint, e.g. http://0.0.0.0:8081/healthz (the chart's probes)")
    p.add_argument("--verbose", action="store_true")


def from_args(args: argparse.Namespace) -> Config:
    return Config(worker_image=args.worker_image, job_image=args.job_image, store_root=args.store_root,
                  job_pod_annotations=_kv(args.job_pod_annotations or ""), resync_seconds=args.resync_seconds,
                  backoff_base_seconds=args.backoff_base_seconds, namespaces=args.namespace or [],
                  metrics_port=args.metrics_port, peering=args.peering, kubeconfig=args.kubeconfig,
                  peering_priority=args.peering_priority, peering_lifetime=args.peering_lifetime,
                  create_delay_seconds=args.create_delay_seconds,
                  workload_cluster_role=args.workload_cluster_role,
                  image_pull_policy=args.image_pull_policy,
                  image_pull_secrets=[n.strip() for n in (args.image_pull_secrets or "").split(",") if n.strip()],
                  liveness_endpoint=args.liveness)
