"""The ``loraplane`` console entry point.

Each subcommand lives with the subpackage it drives and is imported only
when chosen, so ``loraplane dev-cluster up`` never pays for importing torch.
A subcommand module exposes ``configure(parser)`` (add its arguments) and
``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Only the chosen module is imported.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("loraplane.demo", "canary rollout demo: local cluster, operator, real CPU workers, timeline"),
    "dev-cluster": ("loraplane.devcluster.cli", "start, stop or locate the local control plane"),
    "images": ("loraplane.devcluster.images", "build the operator and worker images (buildah or docker), cached by content hash"),
    "modelstore": ("loraplane.modelstore.cli", "publish, verify, check, list, show, gc, backup and restore the ModelStore"),
    "operator": ("loraplane.operator.cli.command", "run the operator; generate CRDs"),
    "train": ("loraplane.training.cli", "train a LoRA/QLoRA adapter and publish it"),
    "worker": ("loraplane.worker.cli", "run an inference worker"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraplane", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, helptext) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=helptext)
        if name == chosen:
            mod = importlib.import_module(module)
            mod.configure(sp)
            sp.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
