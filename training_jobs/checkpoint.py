"""Resumable checkpoints, written so a killed pod never leaves a half one.

Layout under ``<output_dir>/checkpoints/``: ``step-<N>/`` holding
``adapter.safetensors`` (LoRA weights only), ``state.pt`` (optimizer,
scheduler, RNG) and ``meta.json`` (step, fingerprint, loss history), plus a
``latest`` file naming the newest complete one. A checkpoint is built in a
temporary directory, fsynced, renamed into place, and only then does
``latest`` switch (write-then-rename), so whatever ``latest`` names is whole.
Older checkpoints are removed after the switch.

The fingerprint (dataset sha256 + weight-deciding hyper-parameters + base
checksum) stops a restarted Job from resuming someone else's run.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def fingerprint(dataset_sha256: str, hyper: dict[str, Any], base_checksum: str) -> str:
    relevant = {k: v for k, v in hyper.items() if k not in ("gradient_checkpointing",)}
    blob = json.dumps({"dataset": dataset_sha256, "hyper": relevant, "base": base_checksum},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def rng_state() -> dict[str, Any]:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Loaded:
    step: int
    meta: dict[str, Any]
    adapter_state: dict[str, Any]
    state: dict[str, Any]
    path: Path


def save(ckpt_root: Path, step: int, adapter_state: dict, optimizer, scheduler, meta: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` atomically and make it the latest."""
    import torch
    from safetensors.torch import save_file

    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step}"
    tmp = ckpt_root / f".tmp-step-{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter_state.items()}, tmp / "adapter.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
               tmp / "state.pt")
    (tmp / "meta.json").write_text(json.dumps({**meta, "step": step}, indent=2, default=str))
    for f in tmp.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(tmp)
    if final.exists():  # same step written before (e.g. a retried final save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    _write_file_atomic(ckpt_root / LATEST, final.name.encode())
    for old in ckpt_root.iterdir():
        if old.is_dir() and old.name != final.name and (old.name.startswith("step-") or old.name.startswith(".tmp-")):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_latest(ckpt_root: Path, expected_fingerprint: str) -> Loaded | None:
    """The newest complete checkpoint, or None if there is none."""
    import torch
    from safetensors.torch import load_file

    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    try:
        meta = json.loads((path / "meta.json").read_text())
        adapter_state = load_file(path / "adapter.safetensors")
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    if meta.get("fingerprint") != expected_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was written by a different run (dataset, base or hyper-parameters differ); "
            "use another output dir or pass --no-resume to start over"
        )
    return Loaded(int(meta["step"]), meta, adapter_state, state, path)


def clear(ckpt_root: Path) -> None:
    if ckpt_root.exists():
        shutil.rmtree(ckpt_root)
