"""s3_build's cache rules: the stamp, written last, decides whether versitygw is rebuilt."""

from __future__ import annotations

import json

from loraplane.devcluster import s3_build


def test_rebuilt_unless_stamp_matches_and_binary_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPLANE_CACHE", str(tmp_path))
    d = s3_build.bin_dir()
    assert d == tmp_path / "s3" / "versitygw" / s3_build.VERSION / "bin"
    assert s3_build.missing()  # nothing there
    d.mkdir(parents=True)
    binary = d / s3_build.BINARY
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    assert s3_build.missing()  # binary without stamp: an interrupted build
    (d / s3_build.STAMP).write_text(json.dumps({"version": s3_build.VERSION}))
    assert not s3_build.missing()
    (d / s3_build.STAMP).write_text(json.dumps({"version": "v0.0.1"}))
    assert s3_build.missing()  # another pin
    (d / s3_build.STAMP).write_text(json.dumps({"version": s3_build.VERSION}))
    binary.unlink()
    assert s3_build.missing()
