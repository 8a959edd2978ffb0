"""Can the operator build this object's children? Checked before any child
is created, purely.

Some objects pass the API server's schema and pydantic yet cannot become
valid children: a WorkerPool named ``pool.a`` (not a Service name), a name
whose derived label values pass 63 characters, ``resources.cpu: lots`` or
``memory: -1Gi``. Creating children first and meeting the API server's
refusal half-way left a Pod behind and looped on tracebacks. Here the
Kubernetes rules for those names, label values and quantities are applied to
the children the operator would create (the real manifests of
``core.manifests`` where they are cheap to build), and each problem names
the field of the object it comes from. ``checked`` turns them into the
same ``InvalidObject`` a pydantic error becomes, so the controllers report
one condition (reason ``InvalidSpec``) and create nothing.
"""

from __future__ import annotations

import re

from ..api.common_types import HostPathVolume, StoreVolume
from ..api.names import OWNER_LABEL, desired_configmap, owner_label_value, worker_name
from ..api.resources import R, AdapterResource, BaseModelResource, InvalidObject, WorkerPoolResource
from .manifests import Manifest, desired_configmap_obj, service, worker_pod

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_LABEL = re.compile(rf"^{_LABEL}$")
DNS1123_SUBDOMAIN = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")


def service_name_problem(name: str) -> str | None:
    if len(name) > 63 or not DNS1035_LABEL.match(name):
        return (f"{name!r} cannot name a Service (lower-case letters, digits and '-', starting with a letter, "
                f"at most 63 characters)")
    return None


def object_name_problem(name: str) -> str | None:
    if len(name) > 253 or not DNS1123_SUBDOMAIN.match(name):
        return f"{name!r} is not a valid object name (DNS-1123 subdomain)"
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > 63 or not LABEL_VALUE.match(value):
        return f"label value {value!r} is not valid (at most 63 characters, alphanumerics, '-', '_' or '.')"
    return None


def label_key_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if (prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN.match(prefix))) or len(name) > 63 \
            or not LABEL_NAME.match(name):
        return f"label key {key!r} is not valid"
    return None


def quantity_problem(value: str) -> str | None:
    """A resource request: a Kubernetes quantity, not negative."""
    if not QUANTITY.match(value.strip() if isinstance(value, str) else ""):
        return f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 16Gi)"
    if value.strip().startswith("-"):
        return f"{value!r} is negative: a request must be >= 0"
    return None


def manifest_problems(obj: Manifest) -> list[str]:
    """What the API server would refuse in a child manifest: its name, its
    labels (and its pod template's), its containers' resource requests."""
    kind, meta = obj["kind"], obj["metadata"]
    why = service_name_problem(meta["name"]) if kind == "Service" else object_name_problem(meta["name"])
    problems = [f"{kind} name: {why}"] if why else []
    if kind == "Job" and len(meta["name"]) > 63:  # its pods carry it as the job-name label
        problems.append(f"Job name {meta['name']!r} is longer than 63 characters")
    template = (obj.get("spec") or {}).get("template") or {}
    pod_spec = template.get("spec") if kind == "Job" else obj.get("spec") if kind == "Pod" else None
    for labels in (meta.get("labels") or {}, (template.get("metadata") or {}).get("labels") or {}):
        for k, v in labels.items():
            problems += [f"{kind} label {k}: {p}" for p in (label_key_problem(k), label_value_problem(v)) if p]
    for c in (pod_spec or {}).get("containers") or []:
        for res, value in ((c.get("resources") or {}).get("requests") or {}).items():
            why = quantity_problem(str(value))
            if why:
                problems.append(f"{kind} container {c['name']} requests {res}: {why}")
    return problems


def _named(field: str, *whys: str | None) -> list[tuple[str, str]]:
    return [(field, w) for w in whys if w]


def pool_problems(pool: WorkerPoolResource) -> list[tuple[str, str]]:
    """(field, why) for each child of the pool the API server would refuse."""
    name, spec = pool.name, pool.spec
    last = max(spec.replicas - 1, 0)
    out = _named("metadata.name", service_name_problem(name), label_value_problem(name),
                 object_name_problem(worker_name(name, last)), object_name_problem(desired_configmap(name)))
    for res in ("cpu", "memory"):
        out += _named(f"spec.resources.{res}", quantity_problem(getattr(spec.resources, res)))
    if out:
        return out
    # The children as built: a backstop for any rule of theirs not named above.
    store = spec.store or StoreVolume(hostPath=HostPathVolume(path="/models"))
    children = [worker_pod(pool, last, "node", 0, 1, spec.variants[0], spec.image or "image", store),
                service(pool), desired_configmap_obj(pool, "{}")]
    return [("metadata.name", p) for c in children for p in manifest_problems(c)]


def resolve_problems(obj: BaseModelResource | AdapterResource) -> list[tuple[str, str]]:
    """(field, why) for the labels of the publish/verify/training Jobs and pods."""
    out = _named("metadata.name", label_value_problem(owner_label_value(obj.kind, obj.name)))
    training = getattr(obj.spec, "training", None)
    if training is not None:
        out += _named("metadata.name", label_value_problem(obj.name))  # training pods' loraplane.io/training
        for res in ("cpu", "memory"):
            out += _named(f"spec.training.resources.{res}", quantity_problem(getattr(training.resources, res)))
    return out


def checked(obj: R | InvalidObject) -> R | InvalidObject:
    """A parsed object (``api.resources.parse``, at the controller boundary) through the checks
    above: the object, or an ``InvalidObject`` naming every field the operator cannot build from."""
    if isinstance(obj, InvalidObject):
        return obj
    problems = pool_problems(obj) if isinstance(obj, WorkerPoolResource) else resolve_problems(obj)
    if not problems:
        return obj
    return InvalidObject(kind=obj.kind, name=obj.name, fields=[f for f, _ in problems],
                         message="; ".join(f"{f}: {w}" for f, w in problems)[:1000])
