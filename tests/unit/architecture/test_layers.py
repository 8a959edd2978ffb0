"""The operator's layers, enforced: imports go only downward
``cli -> controllers -> core -> api`` and nothing imports in a cycle.

Every import statement counts, including the ones inside functions (a late
import hides a cycle from the interpreter, not from the design). The source
is parsed with ``ast``; nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

#: folder -> package, as in pyproject's package-dir (the product only)
PACKAGES = {
    "operator": "loraplane.operator",
    "worker_image": "loraplane.worker",
    "training_jobs": "loraplane.training",
    "modelstore": "loraplane.modelstore",
    "loraplane/contracts": "loraplane.contracts",
}
LAYERS = ("api", "core", "controllers", "cli")  # bottom to top
#: loraplane packages outside the operator a layer may use (all of them sit below the operator)
OUTSIDE = {
    "api": {"loraplane.contracts"},
    "core": {"loraplane.contracts", "loraplane.modelstore"},
    "controllers": {"loraplane.contracts", "loraplane.modelstore"},
    "cli": {"loraplane.contracts", "loraplane.modelstore"},
}


#: flat-layout module names kept as aliases of their new homes: none left (the dev
#: harness now names the layers). A new entry needs a reason.
LEGACY_ALIASES: dict[str, str] = {}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join((package, *rel))] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Absolute names of the loraplane modules (or packages) ``name`` imports."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in found if m == "loraplane" or m.startswith("loraplane.")}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(name, path) if m in mods and m != name} for name, path in mods.items()}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] == ["loraplane", "operator"] and len(parts) > 2 and parts[2] in LAYERS:
        return parts[2]
    return None


def test_the_layers_exist_and_hold_modules():
    mods = modules()
    for layer in LAYERS:
        assert any(layer_of(m) == layer and m != f"loraplane.operator.{layer}" for m in mods), layer


def test_operator_imports_only_go_downward():
    bad = []
    for src, targets in graph().items():
        layer = layer_of(src)
        if layer is None:
            continue
        rank = LAYERS.index(layer)
        for dst in sorted(targets):
            if dst.startswith("loraplane.operator"):
                to = layer_of(dst)
                if to is None and dst != "loraplane.operator":
                    bad.append(f"{src} -> {dst} (outside the layers)")
                elif to is not None and LAYERS.index(to) > rank:
                    bad.append(f"{src} -> {dst} ({layer} may not import {to})")
            elif not any(dst == p or dst.startswith(p + ".") for p in OUTSIDE[layer]):
                bad.append(f"{src} -> {dst} ({layer} may use only {sorted(OUTSIDE[layer])})")
    assert not bad, "upward or sideways imports:\n" + "\n".join(bad)


def test_nothing_but_layers_and_legacy_aliases_at_the_operator_top():
    top = {p.stem for p in (ROOT / "operator").glob("*.py")} - {"__init__"}
    assert top == set(LEGACY_ALIASES), f"put new modules in a layer ({', '.join(LAYERS)}), not at the top"
    for old, new in LEGACY_ALIASES.items():
        assert f'"loraplane.operator.{new}"' in (ROOT / "operator" / f"{old}.py").read_text(), old


def test_operator_and_worker_share_only_the_contracts():
    g = graph()
    bad = [f"{s} -> {d}" for s, ds in g.items() for d in ds
           if (s.startswith("loraplane.worker") and d.startswith("loraplane.operator"))
           or (s.startswith("loraplane.operator") and d.startswith("loraplane.worker"))
           or (s.startswith("loraplane.contracts") and not d.startswith("loraplane.contracts"))]
    assert not bad, "\n".join(bad)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_what_they_claim():
    """The detector itself: a cycle and an upward edge are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("loraplane.operator.core.pool") == "core"
    assert LAYERS.index("controllers") > LAYERS.index("core")
