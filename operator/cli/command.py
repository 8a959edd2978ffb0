"""``loraplane operator run|crds``.

``run`` starts the kopf operator against any kubeconfig (or in-cluster
credentials); ``crds`` writes (or ``--check``s) the generated CRD YAML.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="op_command", metavar="ACTION", required=True)
    p = sub.add_parser("crds", help="write the CRD YAML generated from the API types")
    p.add_argument("--out", type=Path, default=None, help="directory (default: crds/ of the source tree)")
    p.add_argument("--check", action="store_true", help="exit 1 when the files there are stale")
    p = sub.add_parser("run", help="run the operator")
    from ..controllers.config import add_arguments  # noqa: PLC0415 - keep `crds` light
    add_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.op_command == "crds":
        from ..api import crdgen
        argv = [str(args.out)] if args.out else []
        return crdgen.main(argv + (["--check"] if args.check else []))
    from .run import run_operator
    return run_operator(args)
