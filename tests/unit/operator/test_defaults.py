"""Server-side defaults (the generated CRDs' ``default:``s, applied by the
API server) and pydantic's defaults (applied when the operator parses an
object) agree for every field of every resource, spec and status.

For each field with a default, the value the operator ends up with is the
same whether the field arrived absent (pydantic fills it) or filled by the
API server's defaulting (then parsed). A field whose pydantic default is
neither None nor empty must also carry a CRD default, so ``kubectl get -o
yaml`` shows what the operator uses.
"""

from __future__ import annotations

import copy
import types
import typing

import pytest
from pydantic import BaseModel, TypeAdapter

from loraplane.operator.api import crdgen
from loraplane.operator.api.resources import WorkerPoolResource, dump, parse


def server_defaults(schema: dict, value):
    """Structural defaulting as the API server does it: absent properties get
    their ``default``, then defaulting continues inside (objects, list items, maps)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        out = dict(value)
        props = schema.get("properties") or {}
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = server_defaults(sub, out[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and not props:
            out = {k: server_defaults(extra, v) for k, v in out.items()}
        return out
    if isinstance(value, list) and "items" in schema:
        return [server_defaults(schema["items"], v) for v in value]
    return value


def nested(annotation, schema: dict):
    """(model, its schema) for every pydantic model a field's type holds."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation, schema
    elif origin is typing.Annotated:
        yield from nested(args[0], schema)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is not type(None):
                yield from nested(arg, schema)
    elif origin is list:
        yield from nested(args[0], schema.get("items") or {})
    elif origin is dict:
        yield from nested(args[1], schema.get("additionalProperties") or {})


def disagreements(model: type[BaseModel], schema: dict, path: str) -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = field.alias or name
        prop = (schema.get("properties") or {}).get(key)
        where = f"{path}.{key}"
        if prop is None:
            out.append(f"{where}: in the pydantic model, not in the CRD schema")
            continue
        if field.is_required():
            if "default" in prop:
                out.append(f"{where}: required in pydantic but defaulted by the CRD")
        else:
            adapter = TypeAdapter(field.annotation)
            want = adapter.dump_python(field.get_default(call_default_factory=True), mode="json", by_alias=True,
                                       exclude_none=True)
            if "default" in prop:
                served = server_defaults(prop, copy.deepcopy(prop["default"]))
                seen = adapter.dump_python(adapter.validate_python(served), mode="json", by_alias=True,
                                           exclude_none=True)
                if seen != want:
                    out.append(f"{where}: CRD default gives {seen!r}, pydantic {want!r}")
            elif want is not None and want not in ({}, []):
                out.append(f"{where}: pydantic default {want!r} has no CRD default")
        for sub_model, sub_schema in nested(field.annotation, prop):
            out += disagreements(sub_model, sub_schema, where)
    return out


@pytest.mark.parametrize("resource", crdgen.RESOURCES, ids=[r[0] for r in crdgen.RESOURCES])
def test_server_and_pydantic_defaults_agree_for_every_field(resource):
    kind, plural, short, spec, status, columns, description = resource
    doc = crdgen.crd(kind, plural, short, spec, status, columns, description)
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    found = disagreements(spec, schema["spec"], "spec") + disagreements(status, schema["status"], "status")
    assert not found, "\n".join(found)


def test_the_walk_covers_nested_fields_and_sees_a_disagreement():
    doc = crdgen.crd(*crdgen.RESOURCES[2])
    schema = copy.deepcopy(doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])
    schema["properties"]["gpu"]["properties"]["headroomMiB"]["default"] = 512
    found = disagreements(crdgen.RESOURCES[2][3], schema, "spec")
    assert "spec.gpu.headroomMiB: CRD default gives 512, pydantic 1024" in found


def test_a_pool_defaulted_by_the_server_parses_to_the_pydantic_defaults():
    doc = crdgen.crd(*crdgen.RESOURCES[2])
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    raw = {"apiVersion": "loraplane.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p", "namespace": "n"},
           "spec": {"baseModelRef": "m", "routes": {"t": [{"adapter": "a", "weight": 100}]}}}
    served = server_defaults(schema, raw)
    assert served["spec"]["replicas"] == 1 and served["spec"]["gpu"]["headroomMiB"] == 1024
    assert dump(parse(WorkerPoolResource, served)) == dump(parse(WorkerPoolResource, raw))
