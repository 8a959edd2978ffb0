"""prom_build: the module version maps to the release, and the stamp decides
what is rebuilt (no stamp, another pin or other tags, a binary gone)."""

from __future__ import annotations

import json

import pytest

from loraplane.devcluster import prom_build, versions

pytestmark = pytest.mark.unit


def test_module_version_is_the_release():
    assert prom_build.release_version("v0.316.0") == "3.16.0"
    assert prom_build.release_version("v0.305.2") == "3.5.2"


def test_stamp_decides_the_rebuild(tmp_path):
    assert prom_build.missing(tmp_path) == ["prometheus", "promtool"]
    for b in prom_build.BINARIES:
        (tmp_path / b).write_text("#!/bin/sh\n")
        (tmp_path / b).chmod(0o755)
    stamp = {"module_version": versions.PROMETHEUS_MODULE_VERSION, "tags": prom_build.BUILD_TAGS}
    (tmp_path / prom_build.STAMP).write_text(json.dumps(stamp))
    assert prom_build.missing(tmp_path) == []
    (tmp_path / prom_build.STAMP).write_text(json.dumps({**stamp, "tags": ""}))
    assert prom_build.missing(tmp_path) == ["prometheus", "promtool"]
    (tmp_path / prom_build.STAMP).write_text(json.dumps({**stamp, "module_version": "v0.300.0"}))
    assert prom_build.missing(tmp_path) == ["prometheus", "promtool"]
    (tmp_path / prom_build.STAMP).write_text(json.dumps(stamp))
    (tmp_path / "promtool").unlink()
    assert prom_build.missing(tmp_path) == ["promtool"]
