"""Suite-wide pytest wiring.

Markers follow the folder a test lives in (tests/unit -> ``unit``,
tests/cluster -> ``cluster``, tests/e2e -> ``e2e``, tests/gpu -> ``gpu``,
tests/kind -> ``kind``),
so a test cannot end up in no suite. ``gpu`` tests skip without CUDA and
``kind`` tests skip unless ``KIND_KUBECONFIG`` points at a reachable cluster.
Session fixtures build the tiny random-weight Mistral once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Subprocesses started by tests (`python -m loraplane...`) run from the
# repository root, where the folder `operator/` would shadow the standard
# library's `operator` if the cwd were on sys.path.
os.environ.setdefault("PYTHONSAFEPATH", "1")

SUITES = ("unit", "cluster", "e2e", "gpu", "kind")
TESTS_DIR = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            suite = Path(item.fspath).relative_to(TESTS_DIR).parts[0]
        except ValueError:
            continue
        if suite in SUITES:
            item.add_marker(getattr(pytest.mark, suite))


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_runtest_setup(item):
    if item.get_closest_marker("gpu") and not _cuda_available():
        pytest.skip("gpu suite: CUDA is not available on this machine")
    if item.get_closest_marker("kind") and not os.environ.get("KIND_KUBECONFIG"):
        pytest.skip("kind suite: set KIND_KUBECONFIG to a reachable kind cluster's kubeconfig")


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    """A saved random-weight Mistral + tokenizer (a few MB), built once."""
    from loraplane.tiny_model import build_base

    return build_base(tmp_path_factory.mktemp("tiny-base") / "base")


@pytest.fixture(scope="session")
def make_tiny_adapter(tiny_base_dir, tmp_path_factory):
    """Factory: a real PEFT LoRA adapter dir for the tiny base, cached per seed."""
    from loraplane.tiny_model import build_adapter

    made: dict[tuple, Path] = {}

    def make(seed: int = 1, r: int = 16) -> Path:
        key = (seed, r)
        if key not in made:
            out = tmp_path_factory.mktemp(f"adapter-s{seed}-r{r}") / "adapter"
            made[key] = build_adapter(tiny_base_dir, out, seed=seed, r=r)
        return made[key]

    return make
