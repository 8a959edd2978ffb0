"""Hypothesis strategies for hostile BaseModel, Adapter and WorkerPool objects.

An object starts valid (one of the ``SEEDS``) and gets one to three
mutations: a path into the object and a hostile value for it. The values
are what a careless or malicious user writes: wrong types, out-of-range and
huge numbers, empty and over-long strings, path tricks, names that are not
DNS labels, malformed quantities, tolerations a Pod refuses, rollout steps
out of order, garbage rollout commands. Some mutations are valid on purpose
(e.g. a well-formed quantity), so the run also shows that good input passes.
Loaded by file path (the suite runs with ``--import-mode=importlib``).
"""

from __future__ import annotations

import copy
import json

from hypothesis import strategies as st

from loraplane.operator.api.rollout_types import RolloutCommand

#: one rollout command annotation (each command is its own ``rollout-command.loraplane.io/<id>``)
COMMAND_ID = "20261202T000000000000-f022f022"
COMMAND_ANNOTATION = RolloutCommand.key(COMMAND_ID)

STORE = {"hostPath": {"path": "/srv/models"}}
SEEDS = {
    "BaseModel": [
        {"metadata": {"name": "base"}, "spec": {"storeName": "mistral", "version": "v1", "store": STORE}},
        {"metadata": {"name": "hub"}, "spec": {"storeName": "mistral", "version": "v1", "store": {
            "persistentVolumeClaim": {"claimName": "store"}}, "source": {"huggingFace": {
                "repo": "org/model", "revision": "main", "tokenSecretRef": {"name": "hf", "key": "token"}}}}},
    ],
    "Adapter": [
        {"metadata": {"name": "adp"}, "spec": {"baseModelRef": "base", "task": "synth", "version": "v1",
                                               "source": {"storeName": "syn"}}},
        {"metadata": {"name": "trained"}, "spec": {"baseModelRef": "base", "task": "synth", "version": "v2",
                                                   "training": {"dataset": {"paths": ["d.jsonl"]}}}},
    ],
    "WorkerPool": [
        {"metadata": {"name": "pool"}, "spec": {
            "baseModelRef": "base", "replicas": 2,
            "routes": {"synth": [{"adapter": "adp", "weight": 90}, {"adapter": "b", "weight": 10}]},
            "rollouts": {"synth": {"canary": "b", "steps": [10, 50, 100]}},
            "gpu": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}},
    ],
}

BAD_STRINGS = ["", " ", "a b", "..", "../etc", "/abs/path", "UPPER", "x" * 300, "ünï", "a/b", "-x", "x-", "x.",
               "pool.a", "7b-agents", "a" * 64, "\n", "$(rm -rf /)", "null", "0", "-1"]
BAD_QUANTITIES = ["lots", "-1Gi", "1.5.5", "16 Gi", "1Gb", "0x10", "1e", "Gi", "", "1e999", "--1", "1m1"]
GOOD_QUANTITIES = ["500m", "2", "16Gi", "1.5", "100Mi", "1e3", ".5"]
NUMBERS = [-1, 0, 1, 5, 99, 100, 101, 1000, 1001, 65535, 65536, 2 ** 31, 2 ** 63 - 1, 1.5, -0.5]

anything = st.one_of(
    st.none(), st.booleans(), st.sampled_from(NUMBERS), st.integers(-2 ** 40, 2 ** 40),
    st.floats(allow_nan=False, allow_infinity=False, width=32), st.sampled_from(BAD_STRINGS),
    st.text(max_size=20), st.lists(st.integers(-5, 200), max_size=4),
    st.dictionaries(st.sampled_from(["a", "path", "name", "weight"]), st.integers(-1, 101), max_size=2))
strings = st.one_of(st.sampled_from(BAD_STRINGS), st.text(max_size=30),
                    st.from_regex(r"\A[a-z0-9][-a-z0-9.]{0,70}\Z"))
names = st.one_of(st.sampled_from(["pool.a", "7b-agents", "a" * 54, "a" * 56, "a" * 63, "a" * 64, "a" * 70,
                                   "x.y.z", "ok-name", "9lives", "b" * 53, "b" * 55]),
                  st.from_regex(r"\A[a-z0-9]([-a-z0-9.]{0,75}[a-z0-9])?\Z"))
quantities = st.one_of(st.sampled_from(BAD_QUANTITIES + GOOD_QUANTITIES), strings)
steps = st.one_of(st.sampled_from([[50, 25, 100], [25, 25, 100], [100, 100], [0, 100], [5, 101], [], [100],
                                   [10, 50, 100]]),
                  st.lists(st.integers(-5, 120), max_size=22))
tolerations = st.lists(st.fixed_dictionaries({}, optional={
    "key": st.one_of(st.sampled_from(["", "k", "bad key!", "nvidia.com/gpu", "a/b/c", "x" * 70]), strings),
    "operator": st.sampled_from(["Exists", "Equal", "In"]),
    "value": st.one_of(st.sampled_from(["", "v", "not a label", "v" * 64]), strings),
    "effect": st.sampled_from(["NoSchedule", "NoExecute", "PreferNoSchedule", "Evict"]),
    "tolerationSeconds": st.sampled_from([-1, 0, 30, 2 ** 63 - 1])}), max_size=2)
commands = st.one_of(
    st.sampled_from(["", "{", "null", "[]", '{"command": "promote"}', '{"command": "explode", "task": "synth", '
                     '"nonce": "1"}', '{"command": "promote", "task": "synth", "nonce": ""}']),
    st.builds(lambda c, t, n: json.dumps({"command": c, "task": t, "nonce": n}),
              st.sampled_from(["promote", "abort", "rollback", "nuke"]), st.sampled_from(["synth", "x"]),
              st.sampled_from(["", "1", "abc"])),
    st.text(max_size=20))
paths = st.one_of(st.sampled_from(["../../etc", "/etc/passwd", "a/../b", "ok/path", "..", "a/..", "/", "/tmp",
                                   "/data", "/models", "/srv/../etc", "rel"]), strings)

COMMON = [(("metadata", "name"), names)]
MUTATIONS = {
    "BaseModel": COMMON + [
        (("spec", "storeName"), strings), (("spec", "version"), strings), (("spec", "owner"), strings),
        (("spec", "store", "hostPath", "path"), paths), (("spec", "store", "mountPath"), paths),
        (("spec", "source", "path"), paths), (("spec", "variants"), anything),
        (("spec", "variants", 0, "vramMiB"), st.sampled_from(NUMBERS)),
        (("spec", "source", "huggingFace", "tokenSecretRef", "key"), strings),
        (("spec", "source", "huggingFace", "repo"), strings), (("spec", "license"), anything),
        (("spec", "store"), anything),
    ],
    "Adapter": COMMON + [
        (("spec", "baseModelRef"), strings), (("spec", "task"), strings), (("spec", "version"), strings),
        (("spec", "source", "path"), paths), (("spec", "source", "storeName"), strings),
        (("spec", "training", "resources", "cpu"), quantities), (("spec", "training", "resources", "memory"), quantities),
        (("spec", "training", "dataset", "paths"), st.lists(paths, max_size=3)),
        (("spec", "training", "hyperparameters", "r"), st.sampled_from(NUMBERS)),
        (("spec", "training", "hyperparameters", "learningRate"), anything),
        (("spec", "training", "gpu", "tolerations"), tolerations), (("spec", "training", "image"), strings),
        (("spec", "training", "backoffLimit"), st.sampled_from(NUMBERS)), (("spec", "training"), anything),
    ],
    "WorkerPool": COMMON + [
        (("spec", "baseModelRef"), strings), (("spec", "replicas"), st.sampled_from(NUMBERS)),
        (("spec", "variants"), st.lists(st.sampled_from(["fp16", "bf16", "int3", "bnb-4bit", ""]), max_size=6)),
        (("spec", "resources", "cpu"), quantities), (("spec", "resources", "memory"), quantities),
        (("spec", "rollouts", "synth", "steps"), steps), (("spec", "rollouts", "synth", "canary"), strings),
        (("spec", "routes", "synth", 0, "weight"), st.sampled_from(NUMBERS)),
        (("spec", "routes", "synth", 1, "adapter"), strings), (("spec", "routes"), anything),
        (("spec", "gpu", "tolerations"), tolerations), (("spec", "gpu", "headroomMiB"), st.sampled_from(NUMBERS)),
        (("spec", "port"), st.sampled_from(NUMBERS)), (("spec", "image"), strings),
        (("spec", "store"), st.sampled_from([{"hostPath": {"path": "/srv/../x"}}, {"hostPath": {"path": "/m"},
                                             "mountPath": "/tmp"}, {"hostPath": {"path": "/m"}}, {}])),
        (("metadata", "annotations", COMMAND_ANNOTATION), commands),
    ],
}


def set_path(doc: dict, path: tuple, value) -> None:
    """Set ``value`` at ``path``, creating dicts on the way; a list index past the end appends."""
    node = doc
    for key, nxt in zip(path, path[1:]):
        empty = [] if isinstance(nxt, int) else {}
        if isinstance(node, list):
            if not node:
                node.append(empty)
            key = min(key, len(node) - 1)
        here = node[key] if isinstance(node, list) else node.get(key)
        if not isinstance(here, type(empty)):
            node[key] = empty
        node = node[key]
    last = path[-1]
    if isinstance(node, list):
        if last < len(node):
            node[last] = value
        else:
            node.append(value)
    else:
        node[last] = value


@st.composite
def hostile_objects(draw):
    """(kind, object, mutated paths)."""
    kind = draw(st.sampled_from(sorted(MUTATIONS)))
    doc = copy.deepcopy(draw(st.sampled_from(SEEDS[kind])))
    doc.update(apiVersion="loraplane.io/v1alpha1", kind=kind)
    chosen = draw(st.lists(st.sampled_from(MUTATIONS[kind]), min_size=1, max_size=3, unique_by=lambda m: m[0]))
    paths = []
    for path, values in chosen:
        set_path(doc, path, draw(values))
        paths.append(path)
    return kind, doc, paths
