"""A closed-loop HTTP load generator for OpenAI-compatible workers.

Why closed loop: ``concurrency`` clients each send their next request as
soon as the previous one returns, which is how the pool-sizing question of
the seeds is asked ("with N concurrent callers, what are p50/p95?").
Summaries are pure functions so they are unit-tested.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp


@dataclass
class Result:
    latency_s: float
    status: int
    completion_tokens: int
    adapter: str | None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(1, math.ceil(q / 100 * len(s)))
    return s[min(k, len(s)) - 1]


def summarize(results: list[Result], wall_s: float) -> dict:
    ok = [r for r in results if r.status == 200]
    lat = [r.latency_s for r in ok]
    toks = sum(r.completion_tokens for r in ok)
    return {
        "requests": len(results), "errors": len(results) - len(ok), "wall_s": round(wall_s, 4),
        "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95), "p99_s": percentile(lat, 99),
        "mean_s": (sum(lat) / len(lat)) if lat else math.nan,
        "req_per_s": len(ok) / wall_s if wall_s > 0 else math.nan,
        "tokens_per_s": toks / wall_s if wall_s > 0 else math.nan,
        "completion_tokens": toks,
    }


async def run_load(
    base_url: str,
    concurrency: int,
    requests: int,
    body_for: Callable[[int], dict],
    path: str = "/v1/completions",
    timeout_s: float = 300,
) -> tuple[list[Result], float]:
    """Send ``requests`` requests with ``concurrency`` clients; return results and wall time."""
    counter = iter(range(requests))
    results: list[Result] = []
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def client() -> None:
            for i in counter:
                t0 = time.perf_counter()
                async with session.post(base_url + path, json=body_for(i)) as resp:
                    data = await resp.json(content_type=None)
                    dt = time.perf_counter() - t0
                    usage = (data or {}).get("usage") or {}
                    results.append(Result(dt, resp.status, usage.get("completion_tokens", 0), (data or {}).get("adapter")))

        t0 = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return results, wall
