"""Every check the operator's types make is also made by the API server, or
is listed as operator-only with the reason the operator reports.

Walks every pydantic model in ``operator/api`` and, for the three custom
resources, the generated CRD schema alongside it:

- each Field constraint (``ge``/``le``/``gt``/``lt``, lengths, ``pattern``),
  each ``Literal``/Enum and each required field has its schema twin at the same
  path (a constraint that crdgen drops, e.g. ``multiple_of``, fails here);
- each ``field_validator``/``model_validator`` is in ``admission.CEL_TWINS``
  with rule messages found on that field's (or model's) schema node, or in
  ``admission.OPERATOR_ONLY`` with a reason the operator's code reports.
"""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
import types
import typing
from pathlib import Path

import annotated_types as at
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

import loraplane.operator.api as api_pkg
from loraplane.operator.api import admission, crdgen
from loraplane.operator.api.resources import AdapterResource, BaseModelResource, WorkerPoolResource

ROOT = Path(__file__).resolve().parents[3]
RESOURCES = {"WorkerPool": WorkerPoolResource, "BaseModel": BaseModelResource, "Adapter": AdapterResource}


def api_models() -> list[type[BaseModel]]:
    out = []
    for info in pkgutil.iter_modules(api_pkg.__path__):
        mod = importlib.import_module(f"{api_pkg.__name__}.{info.name}")
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, BaseModel) and obj.__module__ == mod.__name__:
                out.append(obj)
    return out


def validators(model: type[BaseModel]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(Model.name, "field"|"model", fields) for the validators of a concrete
    model, inherited ones included (a private base's rules count where used)."""
    if model.__name__.startswith("_"):
        return []
    dec = model.__pydantic_decorators__
    out = [(f"{model.__name__}.{name}", "field", d.info.fields) for name, d in dec.field_validators.items()]
    out += [(f"{model.__name__}.{name}", "model", ()) for name, d in dec.model_validators.items()]
    return out


def _crd_roots() -> dict[str, dict]:
    out = {}
    for r in crdgen.RESOURCES:
        out[r[0]] = crdgen.crd(*r)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return out


CONSTRAINT_KEYS = {at.Ge: ("ge", "minimum"), at.Le: ("le", "maximum"), at.Gt: ("gt", "exclusiveMinimum"),
                   at.Lt: ("lt", "exclusiveMaximum")}
LENGTH_KEYS = {"string": ("minLength", "maxLength"), "array": ("minItems", "maxItems"),
               "object": ("minProperties", "maxProperties")}


class Walk:
    """Model/schema pairs and twin problems found while walking a CRD."""

    def __init__(self):
        self.nodes: dict[type, list[tuple[str, dict]]] = {}
        self.problems: list[str] = []

    def constraint(self, c, schema: dict, where: str) -> None:
        if type(c) in CONSTRAINT_KEYS:
            attr, key = CONSTRAINT_KEYS[type(c)]
            if schema.get(key) != getattr(c, attr):
                self.problems.append(f"{where}: {attr}={getattr(c, attr)} has no schema {key}")
            return
        if isinstance(c, (at.MinLen, at.MaxLen)):
            lo, hi = LENGTH_KEYS[schema.get("type", "string")]
            key, want = (lo, c.min_length) if isinstance(c, at.MinLen) else (hi, c.max_length)
            if schema.get(key) != want:
                self.problems.append(f"{where}: length bound {want} has no schema {key}")
            return
        for attr, value in vars(c).items():  # pydantic's general metadata (pattern, strict, ...)
            if value is None:
                continue
            if attr == "pattern":
                if schema.get("pattern") != value:
                    self.problems.append(f"{where}: pattern {value!r} is not the schema's")
            else:
                self.problems.append(f"{where}: constraint {attr}={value!r} has no known schema twin")

    def annotation(self, ann, metadata: list, schema: dict, where: str) -> None:
        for c in metadata:
            self.constraint(c, schema, where)
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        if origin is typing.Annotated:
            inner = []
            for m in args[1:]:
                inner += m.metadata if isinstance(m, FieldInfo) else [m]
            self.annotation(args[0], inner, schema, where)
        elif origin in (typing.Union, types.UnionType):
            for a in args:
                if a is not type(None):
                    self.annotation(a, [], schema, where)
        elif origin is list:
            self.annotation(args[0], [], schema.get("items") or {}, f"{where}[*]")
        elif origin is dict:
            self.annotation(args[1], [], schema.get("additionalProperties") or {}, f"{where}.*")
        elif origin is typing.Literal:
            if sorted(schema.get("enum") or []) != sorted(args):
                self.problems.append(f"{where}: Literal{list(args)} is not the schema enum {schema.get('enum')}")
        elif isinstance(ann, type) and issubclass(ann, enum.Enum):
            if sorted(schema.get("enum") or []) != sorted(e.value for e in ann):
                self.problems.append(f"{where}: enum {ann.__name__} is not the schema enum")
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            self.model(ann, schema, where)

    def model(self, model: type[BaseModel], schema: dict, where: str) -> None:
        self.nodes.setdefault(model, []).append((where, schema))
        props = schema.get("properties") or {}
        for name, field in model.model_fields.items():
            key = field.alias or name
            if key not in props:
                self.problems.append(f"{where}.{key}: not in the CRD schema")
                continue
            if field.is_required() and key not in (schema.get("required") or []):
                self.problems.append(f"{where}.{key}: required by pydantic, not by the schema")
            self.annotation(field.annotation, list(field.metadata), props[key], f"{where}.{key}")


def walk_crds() -> Walk:
    w = Walk()
    for kind, root in _crd_roots().items():
        res = RESOURCES[kind]
        for part in ("spec", "status"):
            w.model(res.model_fields[part].annotation, root["properties"][part], f"{kind}.{part}")
        meta = typing.get_args(res.model_fields["metadata"].annotation) or (res.model_fields["metadata"].annotation,)
        w.nodes.setdefault(meta[0], []).append((f"{kind}.metadata", root))  # name rules live at the root
    return w


def _rule_messages(schema: dict) -> list[str]:
    return [r["message"] for r in schema.get("x-kubernetes-validations") or []]


def twin_problems(walk: Walk) -> list[str]:
    out = []
    for model in api_models():
        for qual, kind, fields in validators(model):
            if qual in admission.OPERATOR_ONLY:
                continue
            if qual not in admission.CEL_TWINS:
                out.append(f"{qual}: no CEL twin in admission.CEL_TWINS and not in OPERATOR_ONLY")
                continue
            places = walk.nodes.get(model, [])
            if not places:
                out.append(f"{qual}: {model.__name__} is in no CRD, so its rule cannot have a CEL twin")
            for where, schema in places:
                for f in fields or (None,):
                    if f is None or where.endswith(".metadata"):  # metadata rules are at the root
                        have = _rule_messages(schema)
                    else:
                        key = model.model_fields[f].alias or f
                        have = _rule_messages(schema["properties"][key]) + [
                            r["message"] for r in schema.get("x-kubernetes-validations") or []
                            if r.get("fieldPath") == f".{key}"]
                    for msg in admission.CEL_TWINS[qual]:
                        if msg not in have:
                            out.append(f"{qual} at {where}{'.' + f if f else ''}: no CEL rule {msg!r}")
    return out


def test_every_field_constraint_has_a_schema_twin():
    w = walk_crds()
    assert not w.problems, "\n".join(w.problems)


def test_every_validator_has_a_cel_twin_or_is_operator_only():
    problems = twin_problems(walk_crds())
    assert not problems, "\n".join(problems)


def test_the_tables_name_only_real_validators():
    real = {q for m in api_models() for q, _, _ in validators(m)}
    stale = (set(admission.CEL_TWINS) | set(admission.OPERATOR_ONLY)) - real
    assert not stale, f"admission tables name validators that do not exist: {stale}"
    assert not set(admission.CEL_TWINS) & set(admission.OPERATOR_ONLY)


def _operator_source() -> str:
    return "\n".join(p.read_text() for d in ("operator/core", "operator/controllers")
                     for p in sorted((ROOT / d).glob("*.py")))


@pytest.mark.parametrize("reason", sorted({r for r, _ in admission.OPERATOR_ONLY.values()} |
                                          set(admission.CROSS_OBJECT)))
def test_operator_only_reasons_are_reported_by_the_operator(reason):
    assert f'"{reason}"' in _operator_source(), f"the operator never reports reason {reason}"


# The walk itself finds what it is meant to find.

def test_the_walk_sees_a_dropped_constraint_and_a_missing_twin(monkeypatch):
    w = walk_crds()
    pool_spec = next(s for where, s in w.nodes[RESOURCES["WorkerPool"].model_fields["spec"].annotation])
    pool_spec["properties"]["replicas"].pop("maximum")
    again = Walk()
    again.model(RESOURCES["WorkerPool"].model_fields["spec"].annotation, pool_spec, "WorkerPool.spec")
    assert "WorkerPool.spec.replicas: le=1000 has no schema maximum" in again.problems
    steps = pool_spec["properties"]["rollouts"]["additionalProperties"]["properties"]["steps"]
    steps["x-kubernetes-validations"] = steps["x-kubernetes-validations"][:1]
    assert any("RolloutSpec._steps" in p and "strictly increasing" in p for p in twin_problems(again))
    monkeypatch.delitem(admission.CEL_TWINS, "Toleration._as_a_pod_would")
    assert "Toleration._as_a_pod_would: no CEL twin in admission.CEL_TWINS and not in OPERATOR_ONLY" in \
        twin_problems(w)


def test_the_walk_covers_the_validators_of_every_kind():
    w = walk_crds()
    covered = {m for m in w.nodes}
    for model in api_models():
        if validators(model) and not any(q in admission.OPERATOR_ONLY for q, _, _ in validators(model)):
            assert model in covered, model
