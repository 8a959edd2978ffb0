"""The operator image, really built (buildah here, docker where an engine answers).

Needs no cluster: it sits in the `cluster` suite because that is where
`make test` runs the slow, machine-level checks. Cold (the debootstrap base
and the image) it costs ~4 min here (docs/testing.md, "Images"); with the
content-hash cache it takes under a second.
"""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time

import pytest

from loraplane.devcluster import images


@pytest.fixture(scope="module")
def operator_image() -> images.BuiltImage:
    return images.build_images(("operator",))["operator"]


def _oci_config(archive) -> dict:
    with tarfile.open(archive) as tar:
        def blob(digest: str) -> dict:
            algo, hexd = digest.split(":")
            return json.load(tar.extractfile(f"blobs/{algo}/{hexd}"))

        index = json.load(tar.extractfile("index.json"))
        manifest = blob(index["manifests"][0]["digest"])
        if "manifests" in manifest:  # an index of indexes (docker save)
            manifest = blob(manifest["manifests"][0]["digest"])
        return blob(manifest["config"]["digest"])


def test_operator_image_builds_and_is_cached(operator_image):
    b = operator_image
    assert re.fullmatch(r"localhost/loraplane/operator:[0-9a-f]{12}", b.ref)
    assert b.archive.is_file() and b.archive.stat().st_size == b.size_bytes
    assert b.archive.name == f"operator-{b.ref.rsplit(':', 1)[1]}.oci.tar"
    t0 = time.monotonic()
    again = images.build_images(("operator",))["operator"]
    assert again.cached and again.ref == b.ref and again.archive == b.archive
    assert time.monotonic() - t0 < 30  # a hash over the tree, no build


def test_operator_image_config(operator_image):
    cfg = _oci_config(operator_image.archive)["config"]
    assert cfg["Entrypoint"] == ["/usr/bin/tini", "--"]
    assert cfg["Cmd"] == ["loraplane", "operator", "run"]
    assert cfg["User"] == "10001:10001"
    env = dict(e.split("=", 1) for e in cfg["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["HOME"] == "/home/loraplane"
    assert "HF_HUB_OFFLINE" not in env and "PIP_CERT" not in env


def test_operator_image_runs_its_cli_without_torch(operator_image):
    builder = images.choose_builder()
    probe = ("import importlib.util as u, sys; "
             "missing = [m for m in ('torch', 'transformers', 'peft', 'pip') if u.find_spec(m)]; "
             "print('present:', missing); sys.exit(1 if missing else 0)")
    if isinstance(builder, images.Docker):
        run = ["docker", "run", "--rm", "--read-only", operator_image.ref]
    else:
        ctr = subprocess.run(builder.base + ["from", "--pull=never", operator_image.ref],
                             capture_output=True, text=True, check=True).stdout.strip()
        run = builder.base + ["run", "--isolation", "chroot", "--user", "10001:10001", ctr, "--"]
    try:
        r = subprocess.run(run + ["/usr/bin/tini", "--", "loraplane", "operator", "run", "--help"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert "usage: loraplane operator run" in r.stdout
        r = subprocess.run(run + ["python", "-c", probe], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        if not isinstance(builder, images.Docker):
            subprocess.run(builder.base + ["rm", ctr], capture_output=True)
