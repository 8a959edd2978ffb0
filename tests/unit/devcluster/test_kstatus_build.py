"""kstatus_build's cache rules: rebuilt when the stamp is absent, the program
is absent, or its source (main.go, the pinned go.mod) changed; reused otherwise."""

from __future__ import annotations

import json

from loraplane.devcluster import kstatus_build


def test_stamp_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPLANE_CACHE", str(tmp_path))
    out = kstatus_build.out_dir() / "bin"
    assert out == tmp_path / "kstatus" / "bin"
    assert kstatus_build.missing()
    out.mkdir(parents=True)
    (out / "kstatus").write_text("#!/bin/sh\n")
    (out / "kstatus").chmod(0o755)
    assert kstatus_build.missing()  # no stamp: an interrupted build
    (out / kstatus_build.STAMP).write_text(json.dumps({"source": "0" * 64}))
    assert kstatus_build.missing()  # built from other source
    (out / kstatus_build.STAMP).write_text(json.dumps({"source": kstatus_build.source_hash()}))
    assert not kstatus_build.missing()
    (out / "kstatus").unlink()
    assert kstatus_build.missing()


def test_pin_read_from_go_mod():
    assert kstatus_build.module_version().startswith("v0.")
