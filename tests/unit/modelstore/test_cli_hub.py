import json
import time

import pytest

from loraplane.cli import main
from loraplane.modelstore import StoreError
from loraplane.modelstore.hub import publish_from_hub


def run(capsys, *argv):
    rc = main(["modelstore", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_publish_list_show_verify_check_gc_json(tmp_path, capsys, tiny_base_dir, make_tiny_adapter):
    root = ["--root", str(tmp_path / "s")]
    rc, out, err = run(capsys, "publish", str(tiny_base_dir), "--kind", "base", "--name", "mistral",
                       "--version", "v1", "--json", *root)
    assert rc == 0 and json.loads(out)["kind"] == "base"
    assert "copy: 100%" in err  # plain progress lines when not a terminal
    rc, out, _ = run(capsys, "publish", str(make_tiny_adapter(seed=1)), "--kind", "adapter", "--name", "synth",
                     "--version", "v1", "--base-name", "mistral", "--task", "synthesizer", *root)
    assert rc == 0 and "published default/adapter/synth@v1" in out
    rc, out, _ = run(capsys, "list", "--json", *root)
    rows = json.loads(out)
    assert rc == 0 and [(r["kind"], r["name"], r["version"], r["current"]) for r in rows] == [
        ("base", "mistral", "v1", True), ("adapter", "synth", "v1", True)]
    rc, out, _ = run(capsys, "show", "adapter", "synth", "--json", *root)
    assert rc == 0 and json.loads(out)["manifest"]["adapter"]["task"] == "synthesizer"
    rc, out, _ = run(capsys, "verify", "adapter", "synth", "--json", *root)
    assert rc == 0 and json.loads(out)["ok"] is True
    rc, out, _ = run(capsys, "check", "--dry-run", "--json", *root)
    assert rc == 0 and json.loads(out)["ok"] is True and json.loads(out)["dry_run"] is True
    rc, out, _ = run(capsys, "gc", "--keep", "1", "--dry-run", "--json", *root)
    assert rc == 0 and json.loads(out)["deleted"] == []
    rc, out, _ = run(capsys, "schema")
    assert rc == 0 and "properties" in json.loads(out)

    # Damage -> exit 1 with the file named; store errors -> exit 2.
    f = tmp_path / "s/default/adapters/synth/versions/v1/adapter_config.json"
    f.write_bytes(f.read_bytes().replace(b'"r": 16', b'"r": 61'))
    rc, out, _ = run(capsys, "verify", "adapter", "synth", *root)
    assert rc == 1 and "corrupt: adapter_config.json" in out
    rc, out, _ = run(capsys, "check", "--json", *root)
    assert rc == 1 and json.loads(out)["ok"] is False
    rc, _, err = run(capsys, "verify", "adapter", "nope", *root)
    assert rc == 2 and "no current version" in err
    rc, _, err = run(capsys, "publish", str(tiny_base_dir), "--kind", "base", "--name", "../x", "--version", "v1", *root)
    assert rc == 2 and "traversal" in err
    with pytest.raises(SystemExit) as e:
        main(["modelstore", "verify"])
    assert e.value.code == 2


def test_tty_progress_draws_a_bar():
    import io

    from loraplane.modelstore.progress import ProgressPrinter
    s = io.StringIO()
    p = ProgressPrinter(stream=s, tty=True)
    p("hash", 50, 100)
    p("hash", 100, 100)
    assert "\rhash  [" in s.getvalue() and "100.0%" in s.getvalue() and s.getvalue().endswith("\n")


def test_hub_unreachable_is_a_quick_clear_error(store):
    start = time.monotonic()
    with pytest.raises(StoreError, match="cannot download hf:mistralai/Mistral-7B-Instruct-v0.3@") as excinfo:
        publish_from_hub(store, "mistralai/Mistral-7B-Instruct-v0.3", "0" * 40, None,
                         name="mistral", version="v1", endpoint="http://127.0.0.1:9")
    assert time.monotonic() - start < 10  # no multi-retry backoff loop
    assert "Connect" in str(excinfo.value)  # a network failure, not a wrong call
    assert not any((store.root / ".downloads").iterdir())
    assert store.list() == []
    with pytest.raises(StoreError, match="not a 40-hex commit sha"):
        publish_from_hub(store, "x/y", "main", None, name="m", version="v1", require_pinned=True)


def test_hub_publish_path_with_a_local_hub_double(store, tiny_base_dir, monkeypatch):
    """The hub itself is unreachable here; this checks our side of the calls:
    the branch is resolved to a sha, the snapshot lands under the store root,
    is published with the sha as source, and the download dir is removed."""
    import shutil
    from types import SimpleNamespace

    import huggingface_hub

    calls = {}

    def model_info(self, repo_id, revision=None, token=None, timeout=None):
        calls["info"] = (repo_id, revision, token, timeout)
        return SimpleNamespace(sha="a" * 40)

    def snapshot_download(repo_id, revision, token, local_dir, **kw):
        calls["download"] = (repo_id, revision, token, local_dir)
        shutil.copytree(tiny_base_dir, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    m = publish_from_hub(store, "org/model", "main", "tok", name="mistral", version="v1", license="Apache-2.0")
    assert calls["info"] == ("org/model", "main", "tok", 10.0)
    assert calls["download"][:3] == ("org/model", "a" * 40, "tok")
    assert calls["download"][3].startswith(str(store.root / ".downloads"))
    assert m.source == f"hf:org/model@{'a' * 40}" and m.license == "Apache-2.0"
    assert store.verify("default", "base", "mistral").ok
    assert not any((store.root / ".downloads").iterdir())


def test_hub_publish_to_a_bucket_downloads_into_the_model_cache(tiny_base_dir, tmp_path, monkeypatch):
    """An S3 store has no root directory: the publish Job's snapshot lands in
    its node-local cache volume (``LORAPLANE_MODEL_CACHE``) and is removed after."""
    import shutil
    from types import SimpleNamespace

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, *a, **kw: SimpleNamespace(sha="b" * 40))

    def snapshot_download(repo_id, revision, token, local_dir, **kw):
        shutil.copytree(tiny_base_dir, local_dir, dirs_exist_ok=True)
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("LORAPLANE_MODEL_CACHE", str(tmp_path / "cache"))
    seen = {}

    class Bucket:  # the S3ModelStore surface publish_from_hub uses: publish, no root
        def publish(self, src, **kw):
            seen["src"], seen["files"], seen["source"] = src, sorted(p.name for p in src.iterdir()), kw["source"]
            return "manifest"

    assert publish_from_hub(Bucket(), "org/model", "main", None, name="m", version="v1") == "manifest"
    assert str(seen["src"]).startswith(str(tmp_path / "cache" / ".downloads"))
    assert "config.json" in seen["files"] and seen["source"] == f"hf:org/model@{'b' * 40}"
    assert not any((tmp_path / "cache" / ".downloads").iterdir())
