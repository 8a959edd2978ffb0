"""Next-token choice per batch row: greedy, temperature and nucleus (top-p).

Why vectorised per row: one batch mixes requests with different
temperature/top_p; sampling them in one call keeps the decode step free of
Python loops over rows.
"""

from __future__ import annotations

import torch


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    generator: torch.Generator | None = None,
    uniforms: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one token id per row of ``logits`` [B, V].

    ``temperature`` [B]: <= 0 means greedy (argmax). ``top_p`` [B] in (0, 1]:
    keep the smallest set of tokens whose probability mass reaches top_p.
    ``uniforms`` [B] (optional): one uniform draw in [0, 1) per row, used by
    inverse-CDF sampling, so a row's choice depends only on its own draw (the
    engine draws it from the request's own seeded generator); without it,
    ``torch.multinomial`` draws from ``generator`` (or the global RNG).
    """
    logits = logits.float()
    out = logits.argmax(-1)
    sampled = temperature > 0
    if not bool(sampled.any()):
        return out
    rows = sampled.nonzero(as_tuple=True)[0]
    scaled = logits[rows] / temperature[rows].unsqueeze(-1).to(logits.device)
    probs = torch.softmax(scaled, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    cum = sorted_p.cumsum(-1)
    # drop a token when the mass before it already reaches top_p (the top token always stays)
    drop = (cum - sorted_p) >= top_p[rows].unsqueeze(-1).to(logits.device)
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    if uniforms is None:
        pick = torch.multinomial(sorted_p.cpu(), 1, generator=generator).to(order.device)
    else:
        cdf = sorted_p.cumsum(-1).cpu()
        target = uniforms.to(torch.float32).cpu()[rows.cpu()].unsqueeze(-1) * cdf[:, -1:]
        # first token whose cumulative mass exceeds the draw: never a dropped (zero-mass) token
        last = ((sorted_p > 0).sum(-1, keepdim=True) - 1).clamp(min=0).cpu()  # sorted: kept tokens come first
        pick = torch.minimum(torch.searchsorted(cdf, target, right=True), last).to(order.device)
    out[rows] = order.gather(-1, pick).squeeze(-1)
    return out


def find_stop(text: str, stops: list[str]) -> int | None:
    """Index where the earliest stop string starts in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def safe_emit_length(text: str, stops: list[str]) -> int:
    """How much of ``text`` can be streamed without possibly splitting a stop string."""
    hold = max((len(s) for s in stops if s), default=1) - 1
    return max(0, len(text) - hold)
