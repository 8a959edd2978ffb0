"""Fixtures for ModelStore tests: a fresh store with the tiny base published."""

from __future__ import annotations

import pytest

from loraplane.modelstore import ModelStore


@pytest.fixture
def store(tmp_path) -> ModelStore:
    return ModelStore(tmp_path / "store")


@pytest.fixture
def published(store, tiny_base_dir, make_tiny_adapter):
    """Store with base mistral@v1 and adapter synth@v1 (seed 1) published."""
    store.publish(tiny_base_dir, kind="base", name="mistral", version="v1", license="Apache-2.0")
    store.publish(make_tiny_adapter(seed=1), kind="adapter", name="synth", version="v1",
                  base_name="mistral", task="synthesizer")
    return store
