"""Start the operator: ``loraplane operator run``."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time

from ..controllers.config import from_args, seniority_priority


def run_operator(args) -> int:
    import kopf

    from ..controllers import handlers, metrics, training_handlers  # noqa: F401 - registers the training pod handler
    from ..controllers.daemon_finalizers import drop_daemon_finalizers
    from ..controllers.in_cluster import login_with_service_account
    from ..controllers.kube import Kube
    from ..controllers.ledger_cache import LedgerCache
    from ..controllers.reconcile import Applied

    cfg = from_args(args)
    drop_daemon_finalizers()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # one line per watch event otherwise
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if cfg.kubeconfig:
        os.environ["KUBECONFIG"] = cfg.kubeconfig
    handlers.State.kube = Kube(cfg.kubeconfig)
    handlers.State.cfg = cfg
    kube = handlers.State.kube
    handlers.State.ledger = LedgerCache(kube.list_nodes, kube.list_pods, resync_seconds=cfg.resync_seconds)
    handlers.State.applied = Applied(ttl=cfg.resync_seconds)
    metrics.serve(cfg.metrics_port)

    @kopf.on.login()
    def login(**kwargs):
        if cfg.kubeconfig:
            return kopf.login_with_kubeconfig(**kwargs)
        return login_with_service_account(**kwargs)

    asyncio.run(kopf.operator(**operator_kwargs(cfg, kopf)))
    return 0


def operator_kwargs(cfg, kopf, registry=None) -> dict:
    """kopf.operator() arguments. With peering, a priority no other replica has (kopf pauses
    all peers of equal priority) and the keep-alive lifetime; with ``--namespace``, kopf peers
    through a namespaced KopfPeering of that name in each watched namespace (the chart creates
    them), otherwise through the ClusterKopfPeering."""
    kwargs = {"standalone": cfg.peering is None, "peering_name": cfg.peering,
              "liveness_endpoint": cfg.liveness_endpoint}
    if cfg.peering is not None:
        priority = cfg.peering_priority
        if priority is None:
            priority = seniority_priority(time.time(), random.SystemRandom().randrange(1_000_000))
        kwargs["priority"] = priority
        lifetime = cfg.peering_lifetime

        @kopf.on.startup(registry=registry)
        def peering_lifetime(settings: kopf.OperatorSettings, **_):
            settings.peering.lifetime = lifetime

        logging.getLogger("loraplane.operator").info(
            "peering %r (%s) with priority %d, keep-alive lifetime %ds", cfg.peering,
            "namespaced: " + ",".join(cfg.namespaces) if cfg.namespaces else "cluster-wide", priority, lifetime)
    if cfg.namespaces:
        kwargs["namespaces"] = cfg.namespaces
    else:
        kwargs["clusterwide"] = True
    return kwargs
