"""constraints.txt pins every dependency of the distribution, and pyproject's floors admit the pins."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[3]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version and " " not in version, f"not an exact pin: {line!r}"
        assert _norm(name) not in out, f"pinned twice: {name}"
        out[_norm(name)] = version
    return out


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return [Requirement(r) for r in reqs]


def installed_closure() -> set[str]:
    """Every distribution the installed loraplane needs, with all its extras, transitively."""
    seen: set[str] = set()
    todo = [(r, None) for r in declared()]
    while todo:
        req, extra = todo.pop()
        env = {"extra": extra or ""}
        if req.marker and not req.marker.evaluate(env):
            continue
        name = _norm(req.name)
        for x in req.extras:
            for sub in md.requires(req.name) or []:
                todo.append((Requirement(sub), x))
        if name in seen:
            continue
        seen.add(name)
        for sub in md.requires(req.name) or []:
            todo.append((Requirement(sub), None))
    return seen


def test_every_declared_dependency_is_pinned_within_its_range():
    p = pins()
    for req in declared():
        assert _norm(req.name) in p, f"{req.name} is a dependency but not pinned in constraints.txt"
        assert req.specifier.contains(p[_norm(req.name)], prereleases=True), \
            f"pin {req.name}=={p[_norm(req.name)]} is outside pyproject's {req}"


def test_every_installed_transitive_dependency_is_pinned_and_installed_at_its_pin():
    p = pins()
    closure = installed_closure()
    missing = sorted(closure - set(p))
    assert not missing, f"installed dependencies not pinned in constraints.txt: {missing}"
    wrong = {n: (md.version(n), p[n]) for n in closure if md.version(n) != p[n]}
    assert not wrong, f"installed version differs from its pin (installed, pinned): {wrong}"


def test_pytest_is_not_a_runtime_dependency():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "pytest" not in {_norm(Requirement(r).name) for r in project["dependencies"]}
    assert "pytest" in {_norm(Requirement(r).name) for r in project["optional-dependencies"]["dev"]}


def test_product_code_does_not_import_pytest():
    product = ["loraplane", "operator", "modelstore", "worker_image", "training_jobs", "perf"]
    hits = [str(f) for d in product for f in (ROOT / d).rglob("*.py")
            if re.search(r"^\s*(import pytest|from pytest|import _pytest|from _pytest)", f.read_text(), re.M)]
    assert not hits, hits


def test_operator_control_path_imports_without_torch():
    r = subprocess.run([sys.executable, "-m", "loraplane.devcluster.controlpath"],
                       capture_output=True, text=True, cwd=ROOT, env={"PYTHONSAFEPATH": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "torch" in r.stdout
