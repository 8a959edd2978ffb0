"""The ``loraplane`` console entry point.

Each subcommand lives with the subpackage it drives and is imported only
when chosen, so ``loraplane dev-cluster up`` never pays for importing torch.
A subcommand module exposes ``configure(parser)`` (add its arguments) and
``run(args) -> int``.

The dev harness's subcommands (``demo``, ``dev-cluster``, ``images``) ship
with the product but take their extra dependencies from the ``harness``
extra: when one is missing they say what to install, not a traceback.
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


#: Subcommands of the dev harness, and the extra that brings their dependencies.
DEV_SUBCOMMANDS = {"demo", "dev-cluster", "images"}
HARNESS_EXTRA = "harness"


class HarnessMissing(Exception):
    """A dev subcommand needs a module that only the ``harness`` extra installs."""

    def __init__(self, command: str, missing: ModuleNotFoundError):
        super().__init__(f"loraplane {command} is part of the dev harness and needs its extra: "
                         f"pip install 'loraplane[{HARNESS_EXTRA}]' (or '.[dev]' in a checkout); "
                         f"missing module: {missing.name or missing}")


def _harness_guard(command: str, error: ModuleNotFoundError) -> None:
    """Turn a third-party module missing under a dev subcommand into ``HarnessMissing``."""
    if command in DEV_SUBCOMMANDS and not (error.name or "").startswith("loraplane"):
        raise HarnessMissing(command, error) from error


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loraplane", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, helptext) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=helptext + (f" [extra: {HARNESS_EXTRA}]" if name in DEV_SUBCOMMANDS else ""))
        if name == chosen:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as e:
                _harness_guard(name, e)
                raise
            mod.configure(sp)
            sp.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
        try:
            return int(args._run(args) or 0)
        except ModuleNotFoundError as e:  # a dev subcommand imports most of what it drives lazily
            _harness_guard(args.command, e)
            raise
    except HarnessMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
