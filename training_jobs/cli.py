"""``loraplane train``: the same trainer a Job runs, from flags or a spec file.

Flags override the spec file (``--spec`` JSON/YAML with the same keys, snake
or camel case). Exit codes: 0 trained (and published if asked) or stopped
on ``--stop-after-steps``; 2 bad config, dataset or method for this machine;
143/130 stopped by SIGTERM/SIGINT after checkpointing the current step; 1
anything else (the error is also the pod's termination message).
"""

from __future__ import annotations

import argparse
import sys

# flag -> (type, help); defaults live in TrainConfig, so unset flags stay unset.
_FLAGS: list[tuple[str, dict]] = [
    ("--method", dict(choices=["lora", "qlora"], help="lora (CPU or GPU) or qlora (4-bit NF4 base, CUDA)")),
    ("--base", dict(help="ModelStore base: owner/name[@version] (default owner: --owner; no version: current)")),
    ("--base-dir", dict(help="local base model directory instead of --base")),
    ("--dataset", dict(action="append", help="JSONL file (repeatable); see docs/training.md for the schema")),
    ("--store-root", dict(help="ModelStore root (default: $MODEL_STORE_ROOT)")),
    ("--output-dir", dict(help="adapter + checkpoints (default: <store>/.training/<owner>/<name>/<version>)")),
    ("--owner", dict(help="store owner of the adapter (and default owner of --base)")),
    ("--name", dict(help="adapter name in the store")),
    ("--version", dict(help="adapter version (default: vYYYYmmddHHMMSS; pass it in Jobs so restarts resume)")),
    ("--task", dict(help="task label recorded in the adapter manifest")),
    ("--base-name", dict(help="store base the adapter belongs to, when training from --base-dir")),
    ("--base-version", dict(help="version of --base-name")),
    ("--verify-base", dict(choices=["full", "quick", "none"], help="how to verify a store base (default full)")),
    ("--r", dict(type=int, help="LoRA rank (default 16)")),
    ("--alpha", dict(type=int, help="LoRA alpha (default 32)")),
    ("--dropout", dict(type=float, help="LoRA dropout (default 0.05)")),
    ("--target-modules", dict(help="comma-separated module names (default q_proj,k_proj,v_proj,o_proj)")),
    ("--learning-rate", dict(type=float, help="peak learning rate (default 2e-4)")),
    ("--weight-decay", dict(type=float)),
    ("--lr-scheduler", dict(choices=["linear", "cosine", "constant"])),
    ("--warmup-steps", dict(type=int)),
    ("--epochs", dict(type=float, help="epochs (default 1; --max-steps wins)")),
    ("--max-steps", dict(type=int, help="optimizer steps")),
    ("--batch-size", dict(type=int, help="micro-batch size (default 4)")),
    ("--grad-accum", dict(type=int, help="micro-batches per optimizer step (default 1)")),
    ("--seq-len", dict(type=int, help="max tokens per example (default 512)")),
    ("--max-grad-norm", dict(type=float)),
    ("--seed", dict(type=int)),
    ("--eval-split", dict(type=float, help="fraction held out for eval loss (default 0.1)")),
    ("--device", dict(choices=["auto", "cpu", "cuda"])),
    ("--dtype", dict(choices=["auto", "float32", "bfloat16", "float16"])),
    ("--logging-steps", dict(type=int, help="one progress line every N steps (default 10)")),
    ("--save-steps", dict(type=int, help="checkpoint every N steps (default 50)")),
    ("--stop-after-steps", dict(type=int, help="checkpoint and exit after this step (train in slices)")),
]
_BOOLS = ["publish", "force", "gradient_checkpointing", "resume"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", help="JSON/YAML file with the same keys as the flags")
    for flag, kw in _FLAGS:
        parser.add_argument(flag, default=None, **kw)
    parser.add_argument("--publish", action=argparse.BooleanOptionalAction, default=None,
                        help="publish the adapter into the ModelStore when training succeeds")
    parser.add_argument("--force", action=argparse.BooleanOptionalAction, default=None,
                        help="replace an existing adapter version in the store")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="resume from the output dir's last checkpoint (default on)")


def overrides_from_args(args: argparse.Namespace) -> dict:
    keys = [f.lstrip("-").replace("-", "_") for f, _ in _FLAGS] + _BOOLS
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def run(args: argparse.Namespace) -> int:
    from .base import BaseModelError
    from .checkpoint import CheckpointError
    from .config import ConfigError, build_config, load_spec_file
    from .dataset import DatasetError
    from .modeling import MethodUnavailable

    try:
        spec = load_spec_file(args.spec) if args.spec else {}
        cfg = build_config(spec, overrides_from_args(args))
    except (ConfigError, OSError) as exc:
        print(f"loraplane train: {exc}", file=sys.stderr)
        return 2
    from .trainer import train

    try:
        result = train(cfg)
    except (DatasetError, MethodUnavailable, ConfigError) as exc:
        print(f"loraplane train: {exc}", file=sys.stderr)
        return 2
    except (BaseModelError, CheckpointError) as exc:
        print(f"loraplane train: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # StoreError, OOM, ...: one clear line, details on stderr
        import traceback

        traceback.print_exc(file=sys.stderr)
        print(f"loraplane train: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if result.signal:  # checkpointed on SIGTERM/SIGINT: non-zero so the Job restarts the pod
        print(f"loraplane train: stopped by {result.signal} after step {result.step}; checkpoint saved",
              file=sys.stderr)
        return 143 if result.signal == "SIGTERM" else 130
    return 0
