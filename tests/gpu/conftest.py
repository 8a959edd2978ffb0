"""GPU suite fixtures: the tiny base and two real adapters in a ModelStore.

The suite runs only where CUDA is available (tests/conftest.py skips it
otherwise); speed on the real Mistral-7B shape is measured by the perf/
benchmarks, not here.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gpu_store(tiny_base_dir, make_tiny_adapter, tmp_path_factory) -> Path:
    from loraplane.modelstore import ModelStore

    root = tmp_path_factory.mktemp("gpu-store")
    store = ModelStore(root)
    store.publish(tiny_base_dir, kind="base", name="tiny", version="v1")
    for seed in (1, 2):
        store.publish(make_tiny_adapter(seed=seed), kind="adapter", name="synth", version=f"v{seed}",
                      base_name="tiny", task="synthesizer")
    return root
