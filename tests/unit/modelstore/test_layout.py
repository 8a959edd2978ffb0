import os

import pytest

from loraplane.modelstore import ModelStore, StoreError
from loraplane.modelstore.layout import read_current, validate_part, validate_relpath


@pytest.mark.parametrize("bad", ["", "..", ".", "../x", "a/b", "/etc", ".hidden", "a..b", "x" * 200, "a b", "a\\b"])
def test_bad_parts_refused(bad):
    with pytest.raises(StoreError):
        validate_part("name", bad)


@pytest.mark.parametrize("good", ["mistral", "mistral_synth_v1", "v20251123-mistral-v0.3", "V1.2"])
def test_good_parts_accepted(good):
    assert validate_part("name", good) == good


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../b", "a//b", "./a"])
def test_bad_relpaths_refused(bad):
    with pytest.raises(StoreError):
        validate_relpath(bad)


def test_publish_with_traversal_name_refused(store, tiny_base_dir, tmp_path):
    for kw in ({"name": "../evil", "version": "v1"}, {"name": "ok", "version": "../../v1"},
               {"name": "/abs", "version": "v1"}):
        with pytest.raises(StoreError, match="name|version"):
            store.publish(tiny_base_dir, kind="base", **kw)
    with pytest.raises(StoreError, match="owner"):
        store.publish(tiny_base_dir, owner="..", kind="base", name="ok", version="v1")
    assert not (tmp_path / "evil").exists()
    assert store.list() == []


def test_resolve_refuses_traversal_and_escaping_symlink(published, tmp_path):
    with pytest.raises(StoreError, match="traversal"):
        published.resolve("default", "base", "mistral", "../../..")
    # A version dir that is a symlink pointing outside the root is refused.
    outside = tmp_path / "outside"
    outside.mkdir()
    vdir = published.layout.versions_dir("default", "base", "mistral")
    os.symlink(outside, vdir / "v9")
    with pytest.raises(StoreError, match="outside the store root"):
        published.resolve("default", "base", "mistral", "v9")
    rows = {r.version: r for r in published.list(kind="base")}
    assert rows["v9"].error and "outside the store root" in rows["v9"].error


def test_hand_edited_current_pointer_refused(published):
    link = published.layout.current_link("default", "adapter", "synth")
    link.unlink()
    os.symlink("../../../../etc", link)
    with pytest.raises(StoreError, match="expected 'versions/<version>'"):
        read_current(link)
    with pytest.raises(StoreError):
        published.resolve("default", "adapter", "synth")


def test_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MODEL_STORE_ROOT", str(tmp_path / "r"))
    assert ModelStore().root == (tmp_path / "r").absolute()
    monkeypatch.delenv("MODEL_STORE_ROOT")
    with pytest.raises(StoreError, match="MODEL_STORE_ROOT"):
        ModelStore()


def test_a_version_relpath_parses_into_its_parts_and_nothing_else_does():
    """What a verify Job on a bucket needs: an explicit ``source.path`` names one version in the layout."""
    from loraplane.modelstore.layout import parse_version_relpath

    assert parse_version_relpath("default/base_models/tiny/versions/v1") == ("default", "base", "tiny", "v1")
    assert parse_version_relpath("team-a/adapters/synth/versions/v2.1/") == ("team-a", "adapter", "synth", "v2.1")
    for bad in ("default/base_models/tiny/v1", "default/models/tiny/versions/v1", "../x/adapters/a/versions/v1",
                "default/adapters/a/versions/..", "/default/adapters/a/versions/v1", "some/dir"):
        with pytest.raises(StoreError, match="owner/base_models"):
            parse_version_relpath(bad)
