"""Training progress: one JSON line per logging step, and the trainer's Pod
annotation that the operator copies into the Adapter's status.

Why an annotation on its own Pod: the trainer needs no access to Adapter
objects (only ``patch`` on its own Pod, found through the downward API
env ``POD_NAME``/``POD_NAMESPACE``), and the operator already watches the
Job's pods. Patches are throttled so a fast loop cannot flood the API
server; the last state (done or failed) is always written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Callable, TextIO

ANNOTATION = "loraplane.io/training-progress"
MIN_PATCH_INTERVAL_S = 5.0
PHASES = ("loading", "training", "evaluating", "saving", "publishing", "succeeded", "stopped", "failed")


@dataclass
class Progress:
    step: int
    totalSteps: int
    loss: float | None
    evalLoss: float | None
    tokensPerSecond: float | None
    etaSeconds: float | None
    phase: str
    updated: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def rates(steps_done: int, tokens: int, elapsed_s: float, total_steps: int, step: int) -> tuple[float | None, float | None]:
    """(tokens/s, ETA seconds) from what this process has done so far.

    Only steps run by this process count (a resumed run has not spent time on
    the earlier ones), so the ETA stays honest after a restart.
    """
    if steps_done <= 0 or elapsed_s <= 0:
        return None, None
    tps = tokens / elapsed_s
    eta = (total_steps - step) * (elapsed_s / steps_done)
    return round(tps, 1), round(max(0.0, eta), 1)


def should_patch(last_patch: float | None, now: float, final: bool, interval: float = MIN_PATCH_INTERVAL_S) -> bool:
    return final or last_patch is None or now - last_patch >= interval


class PodAnnotator:
    """Writes ``ANNOTATION`` on the trainer's own Pod; never fails the training."""

    def __init__(self, patch: Callable[[dict], None] | None, interval: float = MIN_PATCH_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self._patch = patch
        self._interval = interval
        self._clock = clock
        self._last: float | None = None
        self.errors = 0

    @classmethod
    def from_env(cls) -> "PodAnnotator":
        """Patch through the Kubernetes API when POD_NAME/POD_NAMESPACE are set."""
        name, ns = os.environ.get("POD_NAME"), os.environ.get("POD_NAMESPACE")
        if not name or not ns:
            return cls(None)
        try:
            from kubernetes import client, config

            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api = client.CoreV1Api()
        except Exception as exc:
            print(f"training progress: cannot reach the Kubernetes API ({exc}); pod will not be annotated",
                  file=sys.stderr)
            return cls(None)
        return cls(lambda body: api.patch_namespaced_pod(name, ns, body))

    def update(self, p: Progress, final: bool = False) -> bool:
        if self._patch is None:
            return False
        now = self._clock()
        if not should_patch(self._last, now, final, self._interval):
            return False
        self._last = now
        try:
            self._patch({"metadata": {"annotations": {ANNOTATION: p.to_json()}}})
            return True
        except Exception as exc:  # progress is best effort; training goes on
            self.errors += 1
            print(f"training progress: pod patch failed: {exc}", file=sys.stderr)
            return False


class ProgressReporter:
    """Emits the stdout line and the annotation from one Progress value."""

    def __init__(self, total_steps: int, annotator: PodAnnotator | None = None, out: TextIO | None = None):
        self.total_steps = total_steps
        self.annotator = annotator or PodAnnotator(None)
        self.out = out or sys.stdout
        self.last: Progress | None = None

    def report(self, step: int, phase: str, loss: float | None = None, eval_loss: float | None = None,
               tps: float | None = None, eta: float | None = None, final: bool = False,
               line: bool = True, **extra) -> Progress:
        p = Progress(step, self.total_steps, None if loss is None else round(loss, 5),
                     None if eval_loss is None else round(eval_loss, 5), tps, eta, phase, now_iso())
        self.last = p
        if line:
            record = {"event": "progress", **asdict(p), **extra}
            print(json.dumps(record, separators=(",", ":")), file=self.out, flush=True)
        self.annotator.update(p, final=final)
        return p
