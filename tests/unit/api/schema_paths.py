"""Find a node of a generated CRD schema by a dotted path (``*`` steps into a
map's values or a list's items). Loaded by file path (``--import-mode=importlib``)."""

from __future__ import annotations

import yaml

from loraplane.operator.api import crdgen


def root(kind: str) -> dict:
    plural = next(r[1] for r in crdgen.RESOURCES if r[0] == kind)
    doc = yaml.safe_load(crdgen.render_all()[f"loraplane.io_{plural}.yaml"])
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def node(kind: str, path: str) -> dict:
    here = root(kind)
    for step in path.split("."):
        if step == "*":
            here = here.get("items") or here["additionalProperties"]
        else:
            here = here["properties"][step]
    return here


def messages(schema: dict) -> list[str]:
    return [r["message"] for r in schema.get("x-kubernetes-validations", [])]
