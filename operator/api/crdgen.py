"""Generate ``crds/*.yaml`` from the pydantic API types.

``python -m loraplane.operator.api.crdgen [OUT_DIR]`` or ``loraplane operator
crds [--out DIR] [--check]``. The output is deterministic (sorted keys where
order does not matter to readers), so a unit test can compare it with the
committed files and fail when they are stale.

Why hand-convert pydantic's JSON Schema: Kubernetes wants a *structural*
schema: no ``$ref``, no ``anyOf`` for optional fields, no ``title``, no
``additionalProperties: false`` next to ``properties``, and free-form objects
spelled ``x-kubernetes-preserve-unknown-fields``. The conversion is small and
explicit here rather than hidden in a dependency.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from . import adapter_types, basemodel_types, workerpool_types
from .common_types import CATEGORY, GROUP, VERSION
from .names import name_cel_rules

_KEEP = {
    "type", "description", "properties", "items", "required", "enum", "default", "pattern", "minLength",
    "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems",
    "minProperties", "maxProperties", "additionalProperties", "format", "nullable",
    "x-kubernetes-validations", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields", "x-kubernetes-map-type", "x-kubernetes-int-or-string",
}


def _deref(node: dict, defs: dict) -> dict:
    if "$ref" in node:
        target = dict(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        # A field's own description/validations win over the type's.
        merged = {**target, **extra}
        rules = target.get("x-kubernetes-validations", []) + extra.get("x-kubernetes-validations", [])
        if rules:
            merged["x-kubernetes-validations"] = rules
        return merged
    return node


def structural(node: dict, defs: dict) -> dict:
    """Convert one pydantic JSON Schema node into a structural CRD schema node."""
    node = _deref(node, defs)
    if "anyOf" in node:  # Optional[X] -> X; the field is simply not required
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"unions other than Optional[X] are not structural: {node}")
        outer = {k: v for k, v in node.items() if k not in ("anyOf", "default")}
        inner = _deref(options[0], defs)
        rules = inner.get("x-kubernetes-validations", []) + outer.get("x-kubernetes-validations", [])
        node = {**inner, **outer}
        if rules:
            node["x-kubernetes-validations"] = rules
        if node.get("default", 0) is None:
            node.pop("default")
    out: dict = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "additionalProperties":
            if value is True or value == {}:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, dict):
                out[key] = structural(value, defs)
            # False (extra="forbid") is dropped: structural pruning does that job.
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out["type"] = "object"
    if out.get("default", 0) is None:
        out.pop("default")
    return out


def schema_of(model) -> dict:
    raw = model.model_json_schema(by_alias=True, mode="serialization")
    defs = raw.pop("$defs", {})
    return structural(raw, defs)


RESOURCES = [
    # kind, plural, short names, spec model, status model, printer columns, extra
    ("BaseModel", "basemodels", ["bm"], basemodel_types.BaseModelSpec, basemodel_types.BaseModelStatus,
     basemodel_types.PRINTER_COLUMNS, "The base checkpoint, stored once in the ModelStore."),
    ("Adapter", "adapters", ["adp"], adapter_types.AdapterSpec, adapter_types.AdapterStatus,
     adapter_types.PRINTER_COLUMNS, "One version of one task's LoRA adapter on a BaseModel."),
    ("WorkerPool", "workerpools", ["wp"], workerpool_types.WorkerPoolSpec, workerpool_types.WorkerPoolStatus,
     workerpool_types.PRINTER_COLUMNS, "Warm GPU workers for one BaseModel, placed by VRAM headroom, "
     "serving weighted adapter routes."),
]


def crd(kind: str, plural: str, short: list[str], spec, status, columns, description: str) -> dict:
    spec_schema = schema_of(spec)
    spec_schema["description"] = f"Desired state of the {kind}."
    status_schema = schema_of(status)
    status_schema["description"] = f"Observed state of the {kind}, written by the operator."
    version = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "subresources": {"status": {}},
        "additionalPrinterColumns": columns,
        "schema": {"openAPIV3Schema": {
            "type": "object",
            "description": description,
            "required": ["spec"],
            # the root is the only place CEL may read metadata.name
            "x-kubernetes-validations": name_cel_rules(kind),
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": spec_schema,
                "status": status_schema,
            },
        }},
    }
    if kind == "WorkerPool":
        version["subresources"]["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short, "categories": [CATEGORY]},
            "versions": [version],
        },
    }


HEADER = "# Generated by `loraplane operator crds` from operator/api/*_types.py. Do not edit.\n"


def render_all() -> dict[str, str]:
    """file name -> YAML text, for every CRD."""
    out = {}
    for kind, plural, short, spec, status, columns, description in RESOURCES:
        doc = crd(kind, plural, short, spec, status, columns, description)
        out[f"{GROUP}_{plural}.yaml"] = HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)
    return out


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = out_dir / name
        path.write_text(text)
        written.append(path)
    return written


def stale(out_dir: Path) -> list[str]:
    """Files under ``out_dir`` that differ from what the types generate."""
    bad = []
    for name, text in render_all().items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            bad.append(name)
    return bad


def default_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "crds"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loraplane.operator.api.crdgen")
    ap.add_argument("out", nargs="?", type=Path, default=default_dir())
    ap.add_argument("--check", action="store_true", help="exit 1 when the files are stale")
    args = ap.parse_args(argv)
    if args.check:
        bad = stale(args.out)
        for name in bad:
            print(f"stale: {args.out / name}", file=sys.stderr)
        return 1 if bad else 0
    for path in write(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
