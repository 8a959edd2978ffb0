"""Start the operator: ``loraplane operator run``."""

from __future__ import annotations

import asyncio
import logging
import os

from ..controllers.config import from_args


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

    kwargs = {"standalone": cfg.peering is None, "peering_name": cfg.peering,
              "liveness_endpoint": cfg.liveness_endpoint}
    if cfg.namespaces:
        kwargs["namespaces"] = cfg.namespaces
    else:
        kwargs["clusterwide"] = True
    asyncio.run(kopf.operator(**kwargs))
    return 0
