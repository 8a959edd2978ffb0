"""KWOK Stages for the dev cluster: upstream's fast defaults, except that Pods
finish only when a test asks.

Upstream's ``pod-complete`` Stage completes every Job pod as soon as it runs,
which makes "the training Job failed" or "the verify Job is still running"
impossible to test. Here a Running pod moves to Succeeded or Failed only
when it carries the annotation ``loraplane.io/kwok-result`` with that value
(set in a Job's pod template, or patched onto a live pod by a test).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import yaml

RESULT_ANNOTATION = "loraplane.io/kwok-result"
#: Optional: becomes the container's termination message, as a kubelet would
#: copy /dev/termination-log (the host runner sets it from the real file).
MESSAGE_ANNOTATION = "loraplane.io/kwok-message"


def _result_selector(value: str) -> dict:
    return {"key": f'.metadata.annotations["{RESULT_ANNOTATION}"]', "operator": "In", "values": [value]}


def _with_message(template: str) -> str:
    """Add ``message:`` beside the terminated ``reason:``, same indentation.
    Inside upstream's ``range`` over containers ``.`` is the container, so the
    pod is reached through upstream's ``$root``."""
    return re.sub(
        r"^(\s*)reason: Completed$",
        lambda m: f"{m.group(0)}\n{m.group(1)}message: "
                  f'{{{{ or (index $root.metadata.annotations "{MESSAGE_ANNOTATION}") "" | Quote }}}}',
        template, flags=re.M,
    )


def _only_when_asked(stage: dict) -> dict:
    stage = copy.deepcopy(stage)
    exprs = stage["spec"]["selector"]["matchExpressions"]
    exprs[:] = [e for e in exprs if e["key"] != ".metadata.ownerReferences.[].kind"]
    exprs.append(_result_selector("Succeeded"))
    stage["spec"]["next"]["statusTemplate"] = _with_message(stage["spec"]["next"]["statusTemplate"])
    return stage


def _failed_variant(complete: dict) -> dict:
    failed = copy.deepcopy(complete)
    failed["metadata"]["name"] = "pod-failed"
    exprs = failed["spec"]["selector"]["matchExpressions"]
    exprs[-1] = _result_selector("Failed")
    template = failed["spec"]["next"]["statusTemplate"]
    template = template.replace("exitCode: 0", "exitCode: 1").replace("reason: Completed", "reason: Error")
    failed["spec"]["next"]["statusTemplate"] = template.replace("phase: Succeeded", "phase: Failed")
    return failed


def render(upstream_dir: Path) -> str:
    """One multi-document YAML for ``kwok --config``."""
    docs = []
    for path in sorted(upstream_dir.glob("*.yaml")):
        stage = yaml.safe_load(path.read_text())
        if stage["metadata"]["name"] == "pod-complete":
            stage = _only_when_asked(stage)
            docs += [stage, _failed_variant(stage)]
        else:
            docs.append(stage)
    names = {d["metadata"]["name"] for d in docs}
    missing = {"node-initialize", "node-heartbeat", "pod-ready", "pod-complete", "pod-delete"} - names
    if missing:
        raise RuntimeError(f"KWOK stage files missing from {upstream_dir}: {sorted(missing)}")
    return yaml.safe_dump_all(docs, sort_keys=False)
