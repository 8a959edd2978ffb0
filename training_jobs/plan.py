"""The order of training work, as pure functions of (dataset size, config).

Why: resuming must continue exactly where a killed pod stopped. If the
micro-batch sequence is a pure function of the seed, a restart at optimizer
step ``s`` simply starts at micro-batch ``s * grad_accum`` with no data
loader state to save. Epoch ``e`` uses the permutation seeded by
``seed + e``; optimizer steps may straddle an epoch boundary.
"""

from __future__ import annotations

import math
import random


def micro_batches_per_epoch(n_examples: int, batch_size: int) -> int:
    return math.ceil(n_examples / batch_size)


def total_steps(n_examples: int, batch_size: int, grad_accum: int, epochs: float, max_steps: int | None) -> int:
    """Optimizer steps for the run: ``max_steps`` if set, else whole epochs' worth."""
    if max_steps is not None:
        return max_steps
    mbs = micro_batches_per_epoch(n_examples, batch_size) * epochs
    return max(1, math.ceil(mbs / grad_accum))


def micro_batch(index: int, n_examples: int, batch_size: int, seed: int) -> list[int]:
    """Example indices of global micro-batch ``index`` (0-based, across epochs)."""
    per_epoch = micro_batches_per_epoch(n_examples, batch_size)
    epoch, k = divmod(index, per_epoch)
    order = list(range(n_examples))
    random.Random(seed + epoch).shuffle(order)
    return order[k * batch_size : (k + 1) * batch_size]


def step_micro_batches(step: int, grad_accum: int, n_examples: int, batch_size: int, seed: int) -> list[list[int]]:
    """The micro-batches optimizer step ``step`` (0-based) consumes."""
    return [micro_batch(step * grad_accum + j, n_examples, batch_size, seed) for j in range(grad_accum)]


def epoch_of(step: int, grad_accum: int, n_examples: int, batch_size: int) -> float:
    return step * grad_accum / micro_batches_per_epoch(n_examples, batch_size)


def lr_factor(step: int, total: int, warmup: int, kind: str) -> float:
    """Multiplier on the base learning rate at optimizer step ``step``."""
    if warmup and step < warmup:
        return (step + 1) / (warmup + 1)
    if kind == "constant":
        return 1.0
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return max(0.0, 1.0 - progress)  # linear
