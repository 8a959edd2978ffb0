"""A retried training Job after publish-before-exit (training_jobs/published.py):
the same run's published version is recognised, anything else is refused."""

from __future__ import annotations

import json
import shutil

import pytest

from loraplane.modelstore import ModelStore
from loraplane.training.base import BaseInfo
from loraplane.training.config import build_config, hyperparameters
from loraplane.training.published import VersionTaken, published_already
from loraplane.training.summary import SUMMARY_FILE


@pytest.fixture
def published(tmp_path, tiny_base_dir, make_tiny_adapter, dataset_file):
    """A store holding default/facts@v1 with the summary the run ``cfg`` would write."""
    store = ModelStore(tmp_path / "store")
    m = store.publish(tiny_base_dir, owner="default", kind="base", name="tiny", version="v1")
    cfg = build_config({"base": "default/tiny@v1", "dataset": [dataset_file], "store_root": store.root,
                        "publish": True, "name": "facts", "version": "v1", "task": "facts", "r": 8})
    src = tmp_path / "adapter"
    shutil.copytree(make_tiny_adapter(seed=3, r=8), src)
    summary = {"adapter": {"owner": "default", "name": "facts", "version": "v1", "task": "facts"},
               "method": cfg.method, "dataset": {"sha256": "d" * 64}, "base": {"checksum": m.checksum},
               "hyperparameters": hyperparameters(cfg), "steps": {"total": 4, "completed": 4}}
    (src / SUMMARY_FILE).write_text(json.dumps(summary, default=str))
    store.publish(src, owner="default", kind="adapter", name="facts", version="v1", task="facts",
                  base_name="tiny", base_version="v1")
    base = BaseInfo(tiny_base_dir, m.checksum, "store-manifest", "default/tiny@v1", "default", "tiny", "v1")
    return store, cfg, base


def test_the_same_run_is_recognised_as_done(published):
    store, cfg, base = published
    sv, summary = published_already(store, cfg, "d" * 64, base)
    assert sv.version == "v1" and summary["steps"]["completed"] == 4
    assert published_already(store, cfg.model_copy(update={"version": "v2"}), "d" * 64, base) is None


def test_another_run_under_the_same_version_is_refused(published):
    store, cfg, base = published
    with pytest.raises(VersionTaken, match="dataset sha256"):
        published_already(store, cfg, "e" * 64, base)
    with pytest.raises(VersionTaken, match="seed"):
        published_already(store, cfg.model_copy(update={"seed": 7}), "d" * 64, base)


def test_a_damaged_published_copy_is_refused(published):
    store, cfg, base = published
    sv = store.resolve("default", "adapter", "facts", "v1")
    target = next(p for p in sv.path.iterdir() if p.suffix == ".safetensors")
    target.chmod(0o644)
    target.write_bytes(b"\0" * target.stat().st_size)
    with pytest.raises(VersionTaken, match="fails verification"):
        published_already(store, cfg, "d" * 64, base)
