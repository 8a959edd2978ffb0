"""API types for route rollouts: the optional ``rollout`` block, and the
status pieces that record desired vs effective weights, revisions and the
state of each automated rollout.

Why the rollout state lives entirely in ``status``: the operator may restart
at any moment (upgrade, node drain, crash). Everything the step machine
(``rollout.py``) needs to continue — the step, when its analysis window
began, the counters at that moment, the stable route to go back to, the last
command nonce it obeyed — is in these models, so a fresh operator process
resumes a rollout at the same step instead of starting over or forgetting it.

Wiring (see docs/rollouts.md): ``WorkerPoolSpec.rollouts: dict[str, RolloutSpec]``
(task -> block), ``WorkerPoolSpec.drainSeconds`` and ``WorkerPoolStatus.routes /
draining / revisions / rollouts / processedCommands / analysisBaseline``.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from enum import Enum
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from .common_types import DNS_LABEL, ApiModel, cel

#: Prefix of the pool annotations that carry rollout commands, one annotation
#: per command: ``rollout-command.loraplane.io/<id>: {"command": ..., "task": ...}``.
#: Why one key per command and not one slot: two commands sent within one
#: reconcile pass would overwrite each other in a single annotation. Distinct
#: keys are added by a plain merge patch (no read-modify-write, no conflict),
#: the operator applies them in id order, acknowledges the ids in
#: ``status.processedCommands`` and then removes the annotations.
COMMAND_PREFIX = "rollout-command.loraplane.io"
#: Pool annotation recorded as a revision's cause when spec.routes changes
#: (like ``kubernetes.io/change-cause`` for Deployments).
CHANGE_CAUSE_ANNOTATION = "loraplane.io/change-cause"


class Backend(ApiModel):
    """One weighted adapter of a route (same shape as the spec's RouteBackend)."""

    adapter: str = Field(pattern=DNS_LABEL, max_length=63)
    weight: int = Field(ge=0, le=100)


class PrometheusAnalysis(ApiModel):
    """Where the analysis reads the workers' counters when ``provider`` is ``prometheus``
    (``operator/prom_source.py``): instant queries of
    ``loraplane_worker_requests_total<selector>`` and
    ``loraplane_worker_request_duration_seconds_{bucket,sum}<selector>`` at each
    analysis pass, grouped by the ``pod`` label; the judgment (windows, reset
    rule, thresholds) is the same as for the direct scrape."""

    address: str = Field(pattern=r"^https?://", max_length=2048,
                         description="Base URL of the Prometheus HTTP API, e.g. http://prometheus.monitoring:9090.")
    selector: str = Field(
        default='{namespace="$namespace",pool="$pool"}', max_length=1024,
        description="PromQL label matchers selecting this pool's workers; $namespace and $pool are replaced.")


class AnalysisThresholds(ApiModel):
    """When a canary step counts as healthy, compared with the stable version(s)
    of the same task over the window since the step's weights took effect."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.provider != 'prometheus' || has(self.prometheus)",
            "analysis.provider prometheus needs analysis.prometheus.address")]})

    provider: Literal["direct", "prometheus"] = Field(
        default="direct",
        description="direct: the operator scrapes the ready workers' /metrics; prometheus: it queries Prometheus.")
    prometheus: PrometheusAnalysis | None = Field(default=None, description="Used when provider is prometheus.")

    max_p95_regression_percent: float = Field(
        default=20.0, alias="maxP95RegressionPercent", ge=0,
        description="Breach when canary p95 latency exceeds the stable p95 by more than this percentage.")
    max_p99_regression_percent: float | None = Field(
        default=None, alias="maxP99RegressionPercent", ge=0,
        description="Optional: the same check on p99.")
    max_error_rate_percent: float = Field(
        default=1.0, alias="maxErrorRatePercent", ge=0, le=100,
        description="Breach when more than this percentage of canary requests end in a 5xx.")
    min_requests: int = Field(
        default=100, alias="minRequests", ge=1,
        description="Fewer canary (or stable) requests than this in the window: inconclusive, the step waits.")


class RolloutSpec(ApiModel):
    """Automated canary of one task: shift ``steps`` percent to ``canary``, one
    step per ``intervalSeconds`` while analysis is healthy; roll back on a breach."""

    canary: str = Field(pattern=DNS_LABEL, max_length=63,
                        description="Adapter to roll out; changing it starts a new rollout.")
    steps: list[int] = Field(
        default_factory=lambda: [5, 25, 50, 100], min_length=1, max_length=20,
        description="Canary weights, strictly increasing, ending at 100.",
        json_schema_extra={"default": [5, 25, 50, 100], "x-kubernetes-validations": [
            cel("self[size(self) - 1] == 100", "rollout steps must end at 100"),
            cel("self.all(s, s >= 1 && s <= 100)", "rollout steps must be within 1..100"),
            cel("self.isSorted() && self.all(s, self.exists_one(t, t == s))",
                "rollout steps must be strictly increasing"),
        ]})
    interval_seconds: int = Field(default=1800, alias="intervalSeconds", ge=1, le=7 * 86400,
                                  description="Analysis window per step (the playbook's 30 minutes).")
    analysis: AnalysisThresholds = Field(default_factory=AnalysisThresholds, json_schema_extra={"default": {}})
    paused: bool = Field(default=False, description="Hold at the current step (weights unchanged).")
    inconclusive_timeout_seconds: int = Field(
        default=3600, alias="inconclusiveTimeoutSeconds", ge=0, le=7 * 86400,
        description="How long a step may stay inconclusive (too few requests, no metrics) after its "
                    "intervalSeconds; then onInconclusive decides.")
    on_inconclusive: Literal["rollback", "promote"] = Field(
        default="rollback", alias="onInconclusive",
        description="Outcome of a step still inconclusive after inconclusiveTimeoutSeconds: rollback (stable "
                    "weights, RolledBack, reason InconclusiveTimeout) or promote (next step).")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: list[int]) -> list[int]:
        if any(s < 1 or s > 100 for s in v):
            raise ValueError(f"rollout steps must be within 1..100, got {v}")
        if any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"rollout steps must be strictly increasing, got {v}")
        if v[-1] != 100:
            raise ValueError(f"rollout steps must end at 100, got {v}")
        return v


class Phase(str, Enum):
    progressing = "Progressing"
    paused = "Paused"
    promoted = "Promoted"
    rolled_back = "RolledBack"
    aborted = "Aborted"


TERMINAL = (Phase.promoted, Phase.rolled_back, Phase.aborted)


class RolloutState(ApiModel):
    """Status of one task's rollout: enough to resume after an operator restart."""

    task: str
    canary: str
    stable: list[Backend] = Field(description="Route before the rollout: what abort/rollback restore.")
    base_route: list[Backend] = Field(
        alias="baseRoute", description="spec.routes[task] when the rollout began; an edit supersedes the rollout.")
    step_index: int = Field(default=0, alias="stepIndex", ge=0)
    canary_weight: int = Field(default=0, alias="canaryWeight", ge=0, le=100,
                               description="Weight the canary is set to at this step.")
    phase: Phase = Phase.progressing
    step_started: str | None = Field(
        default=None, alias="stepStarted",
        description="RFC 3339 time the step's weights took effect (window start); empty while loading.")
    window_counts: str | None = Field(
        default=None, alias="windowCounts",
        description="Compact JSON: per adapter, the requests and latency buckets counted since stepStarted "
                    "(the analysis window, O(adapters)).")
    last_transition: str = Field(alias="lastTransition", description="RFC 3339 time of the last phase/step change.")
    reason: str = Field(default="", description="CamelCase reason of the last transition.")
    message: str = Field(default="")


class BackendWeights(ApiModel):
    adapter: str
    desired: int = Field(ge=0, le=100)
    effective: int = Field(ge=0, le=100)
    loaded_on: str = Field(default="", alias="loadedOn", description="'ready workers holding it / ready workers'.")


class RouteStatus(ApiModel):
    """Desired vs effective weights of one task (load before route)."""

    task: str
    backends: list[BackendWeights] = Field(default_factory=list)
    pending: bool = Field(default=False, description="True while some desired weight is not in effect yet.")


class Revision(ApiModel):
    """One effective route set, appended whenever the effective routes change."""

    revision: int = Field(ge=1)
    routes: dict[str, list[Backend]]
    time: str
    cause: str = ""
    stable: bool = Field(default=True, description="False while recorded mid-rollout (a canary step).")


COMMANDS = ("promote", "promote-full", "pause", "resume", "abort", "rollback", "retry")


class RolloutCommand(ApiModel):
    """Value of one ``rollout-command.loraplane.io/<id>`` annotation (JSON)."""

    command: str = Field(description="promote | promote-full | pause | resume | abort | rollback | retry")
    task: str
    id: str = Field(default="", exclude=True, description="The annotation's name part (not in the value).")

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @field_validator("command")
    @classmethod
    def _cmd(cls, v: str) -> str:
        if v not in COMMANDS:
            raise ValueError(f"unknown rollout command {v!r}; expected one of {', '.join(COMMANDS)}")
        return v

    @staticmethod
    def new_id(now: dt.datetime | None = None) -> str:
        """``<UTC time to the microsecond>-<8 hex>``: ids sort in sending order (ties: random)."""
        now = now or dt.datetime.now(dt.timezone.utc)
        return f"{now.astimezone(dt.timezone.utc):%Y%m%dT%H%M%S%f}-{secrets.token_hex(4)}"

    @staticmethod
    def key(command_id: str) -> str:
        return f"{COMMAND_PREFIX}/{command_id}"

    @classmethod
    def parse(cls, command_id: str, text: str) -> "RolloutCommand":
        """One annotation; a malformed value raises ``ValueError`` naming it (the pass reports it)."""
        try:
            return cls.model_validate({**json.loads(text), "id": command_id})
        except (ValueError, TypeError) as e:
            raise ValueError(f"annotation {cls.key(command_id)} is not a valid rollout command: {e}") from e

    def to_annotation(self) -> str:
        return json.dumps({"command": self.command, "task": self.task}, sort_keys=True, separators=(",", ":"))


def commands_of(annotations: dict[str, str]) -> list[tuple[str, RolloutCommand | str]]:
    """(id, command or the parse error) of every command annotation, in id order."""
    out: list[tuple[str, RolloutCommand | str]] = []
    for key in sorted(k for k in annotations if k.startswith(COMMAND_PREFIX + "/")):
        cid = key.split("/", 1)[1]
        try:
            out.append((cid, RolloutCommand.parse(cid, annotations[key])))
        except ValueError as e:
            out.append((cid, str(e)))
    return out
