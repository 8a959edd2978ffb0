"""No function of the pure core takes an untyped dict (issue 11, "no core function takes a dict").

Observed objects are parsed once at the kube boundary (``api.resources`` for our
resources, ``api.observed_types`` for Pods and Nodes); the core's parameters say
what they hold. A parameter annotated with a bare ``dict`` / ``Dict`` / ``Mapping``,
``list[dict]`` or ``dict[str, Any]`` fails this test; precise maps such as
``dict[str, str]`` (labels) or ``dict[str, int]`` pass. Desired objects stay wire
format on purpose and are named by the aliases in ``WIRE_ALIASES``.

The source is parsed with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[3] / "operator" / "core"

#: Named wire-format aliases, each documented where it is defined (docs/architecture.md).
WIRE_ALIASES = {
    "Manifest",  # core/manifests.py: a desired object as the API client sends it
    "MergePatch",  # core/routing.py: a JSON merge patch of status fields (None deletes a key)
}

#: Known offenders, as (module, function, parameter). Empty: a new entry needs a reason here, and the
#: test fails when an entry is fixed, so the list only shrinks.
PENDING: set[tuple[str, str, str]] = set()

#: Whole modules still on raw dicts, with why (issue 11 follow-up; the test fails once one is clean).
PENDING_MODULES = {
    "invariants": "the chaos suite's checker over a raw API snapshot; could parse it into api.observed_types first",
}

_UNTYPED = {"dict", "Dict", "Mapping", "MutableMapping"}


def untyped(node: ast.expr | None) -> bool:
    """Whether an annotation holds a dict whose contents it does not say."""
    if node is None:
        return False
    if isinstance(node, ast.Constant) and isinstance(node.value, str):  # a quoted annotation
        return untyped(ast.parse(node.value, mode="eval").body)
    for sub in ast.walk(node):
        if isinstance(sub, ast.Subscript):
            name = sub.value.id if isinstance(sub.value, ast.Name) else getattr(sub.value, "attr", "")
            args = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
            if name in _UNTYPED and any(isinstance(a, ast.Name) and a.id == "Any" for a in args):
                return True
    bare = {id(s.value) for s in ast.walk(node) if isinstance(s, ast.Subscript)}
    return any(isinstance(s, ast.Name) and s.id in _UNTYPED and id(s) not in bare for s in ast.walk(node)) or \
        any(isinstance(s, ast.Attribute) and s.attr in _UNTYPED and id(s) not in bare for s in ast.walk(node))


def offenders() -> set[tuple[str, str, str]]:
    found = set()
    for path in sorted(CORE.glob("*.py")):
        if path.stem in PENDING_MODULES:
            continue
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = fn.args
            for arg in a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]:
                if untyped(arg.annotation):
                    found.add((path.stem, fn.name, arg.arg))
    return found


def _ann(src: str) -> ast.expr:
    return ast.parse(f"def f(x: {src}): pass").body[0].args.args[0].annotation


def test_the_checker_tells_typed_from_untyped_annotations():
    for bad in ("dict", "dict | None", "list[dict]", "dict[str, Any]", "Mapping", "typing.Dict",
                "tuple[dict, int]", "'dict'", "Mapping[str, Any]", "list[dict[str, Any]] | None"):
        assert untyped(_ann(bad)), bad
    for good in ("dict[str, str]", "dict[str, int]", "dict[str, dict[str, int]]", "list[PodView]", "Manifest",
                 "Mapping[str, Sequence[Backend]]", "dict[str, AdapterIn]", "None", "str"):
        assert not untyped(_ann(good)), good


def test_no_core_function_takes_an_untyped_dict():
    found = offenders()
    new = sorted(found - PENDING)
    assert not new, ("core functions taking an untyped dict (parse at the controller boundary into "
                     f"api.observed_types / api.resources, or name a precise type): {new}")


def test_the_pending_list_only_shrinks():
    fixed = sorted(PENDING - offenders())
    assert not fixed, f"fixed: remove from PENDING in {Path(__file__).name}: {fixed}"


def test_pending_modules_still_need_their_exemption():
    for stem in PENDING_MODULES:
        tree = ast.parse((CORE / f"{stem}.py").read_text())
        args = [a for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
        assert any(untyped(a.annotation) for a in args), f"{stem} is typed now: remove it from PENDING_MODULES"


def test_wire_aliases_are_defined_where_documented():
    defined = {t.id for path in CORE.glob("*.py") for node in ast.parse(path.read_text()).body
               if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)}
    assert WIRE_ALIASES <= defined
