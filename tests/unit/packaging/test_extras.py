"""The product needs only the product: every third-party module product code
imports comes from the distribution's own dependencies (or its product
extras ``quant``/``s3``), never from the dev harness's extra; the dev harness
(local control plane, images, demo, traffic, tiny model, perf) takes what
else it needs from the ``harness`` extra, and ``dev`` (what ``make`` installs)
holds all of it. The ``loraplane`` CLI keeps its dev subcommands, and says
which extra to install when one of their dependencies is missing."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[3]
PRODUCT = ["operator", "worker_image", "training_jobs", "modelstore", "loraplane/contracts", "loraplane/cli.py",
           "loraplane/__init__.py"]
HARNESS = ["loraplane/devcluster", "loraplane/demo.py", "loraplane/traffic.py", "loraplane/tiny_model.py", "perf"]
#: grammar libraries perf/grammar_compare.py measures when present (never installed by an extra)
OPTIONAL_BENCH = {"xgrammar", "outlines_core", "lmformatenforcer"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(reqs: list[str]) -> set[str]:
    return {_norm(Requirement(r).name) for r in reqs}


def imported_top_modules(entries: list[str]) -> set[str]:
    """Top-level names of every module imported anywhere (also inside functions) in ``entries``."""
    out = set()
    for entry in entries:
        root = ROOT / entry
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    out |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    out.add(node.module.split(".")[0])
    return out


def third_party(modules: set[str]) -> dict[str, set[str]]:
    """module -> the distributions that provide it, for modules outside the stdlib and loraplane."""
    dists = md.packages_distributions()
    out = {}
    for m in sorted(modules - set(sys.stdlib_module_names) - {"loraplane", "__future__"}):
        out[m] = {_norm(d) for d in dists.get(m, [])}
    return out


def test_product_code_needs_only_the_products_dependencies():
    project = _project()
    extras = project["optional-dependencies"]
    allowed = _names(project["dependencies"]) | _names(extras["quant"]) | _names(extras["s3"])
    missing = {m: d for m, d in third_party(imported_top_modules(PRODUCT)).items() if not d & allowed}
    assert not missing, f"product code imports modules no product dependency provides: {missing}"


def test_the_harness_extra_holds_what_only_the_dev_harness_needs():
    project = _project()
    extras = project["optional-dependencies"]
    product, harness = _names(project["dependencies"]), _names(extras["harness"])
    needs = third_party(imported_top_modules(HARNESS))
    unprovided = {m: d for m, d in needs.items() if not d & (product | harness) and m not in OPTIONAL_BENCH}
    assert not unprovided, f"the dev harness imports modules neither the product nor [harness] provides: {unprovided}"
    assert "matplotlib" in harness  # perf's plots
    # nothing in the extra that the product already has, and nothing the harness does not use
    used = set().union(*needs.values())
    assert not harness & product and harness <= used, (harness & product, harness - used)


def test_dev_holds_the_harness_and_the_product_extras_and_tests_stay_out_of_the_product():
    project = _project()
    extras = project["optional-dependencies"]
    dev = _names(extras["dev"])
    assert _names(extras["harness"]) | _names(extras["s3"]) | _names(extras["quant"]) <= dev
    assert {"pytest", "hypothesis", "openai"} <= dev
    assert not {"pytest", "hypothesis", "openai", "matplotlib"} & _names(project["dependencies"])


# --- the CLI ------------------------------------------------------------------------------------
def _forget(monkeypatch, prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        monkeypatch.delitem(sys.modules, name)


def test_dev_subcommands_stay_in_the_cli(capsys):
    from loraplane.cli import DEV_SUBCOMMANDS, main

    assert DEV_SUBCOMMANDS == {"demo", "dev-cluster", "images"}
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in DEV_SUBCOMMANDS)
    with pytest.raises(SystemExit) as e:  # installed: the subcommand parses
        main(["dev-cluster", "--help"])
    assert e.value.code == 0 and "up" in capsys.readouterr().out


def test_a_missing_harness_dependency_names_the_extra(monkeypatch, capsys):
    """``yaml`` made unimportable, as in an install without it: ``loraplane
    dev-cluster`` says what to install instead of a traceback."""
    from loraplane.cli import main

    _forget(monkeypatch, "loraplane.devcluster")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ModuleNotFoundError
    assert main(["dev-cluster", "status"]) == 2
    err = capsys.readouterr().err
    assert "loraplane dev-cluster is part of the dev harness" in err
    assert "pip install 'loraplane[harness]'" in err and "yaml" in err


def test_a_dependency_missing_at_run_time_names_the_extra_too(monkeypatch, capsys):
    import loraplane.demo
    from loraplane.cli import main

    def run(args):
        import matplotlib_missing_for_this_test  # noqa: F401

    monkeypatch.setattr(loraplane.demo, "run", run)
    assert main(["demo"]) == 2
    err = capsys.readouterr().err
    assert "loraplane demo is part of the dev harness" in err and "matplotlib_missing_for_this_test" in err


def test_a_product_subcommand_with_a_missing_module_is_not_blamed_on_the_harness(monkeypatch):
    from loraplane import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "worker", ("loraplane_no_such_module", "x"))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["worker"])
