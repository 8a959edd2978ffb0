"""Pure parts of `loraplane images build`: apt mirror parsing, context hashing, Dockerfile facts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from loraplane.devcluster import images

ROOT = Path(__file__).resolve().parents[3]

DEB822 = """Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_apt_mirror_deb822():
    assert images.apt_mirror(DEB822) == "http://mirror.example/debian"
    assert images.apt_mirror(DEB822, "bookworm-security") == "http://mirror.example/debian-security"
    assert images.apt_mirror(DEB822, "trixie") is None


def test_apt_mirror_one_line_format_with_options_and_comments():
    text = ("# deb http://old.example/debian bookworm main\n"
            "deb-src http://src.example/debian bookworm main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main contrib\n")
    assert images.apt_mirror(text) == "http://one.example/debian"


def test_apt_mirror_skips_disabled_and_source_only_stanzas():
    text = ("Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
            "Types: deb\nURIs: http://off.example/debian\nSuites: bookworm\nEnabled: no\n\n"
            "Types: deb\nURIs: http://on.example/debian\nSuites: bookworm\n")
    assert images.apt_mirror(text) == "http://on.example/debian"


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for d in ("loraplane", "operator", "modelstore", "worker_image", "training_jobs", "perf", "tests", "docs"):
        (root / d).mkdir(parents=True)
        (root / d / "__init__.py").write_text(f"# {d}\n")
    (root / "worker_image").joinpath("Dockerfile").write_text((ROOT / "worker_image/Dockerfile").read_text())
    for f in ("Dockerfile", "pyproject.toml", "README.md", "constraints.txt"):
        shutil.copy(ROOT / f, root / f)
    return root


@pytest.mark.parametrize("dockerfile", sorted(images.IMAGES.values()))
def test_content_hash_follows_copied_files_only(tmp_path, dockerfile):
    root = _tree(tmp_path)
    h0 = images.content_hash(root, dockerfile, "sha256:base", {"BASE_IMAGE": "b"})
    # unrelated files: tests, docs, bytecode caches
    (root / "tests" / "test_x.py").write_text("x = 1\n")
    (root / "docs" / "new.md").write_text("doc\n")
    (root / "operator" / "__pycache__").mkdir()
    (root / "operator" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    assert images.content_hash(root, dockerfile, "sha256:base", {"BASE_IMAGE": "b"}) == h0
    # a file the build reads
    (root / "operator" / "handlers.py").write_text("# new\n")
    h1 = images.content_hash(root, dockerfile, "sha256:base", {"BASE_IMAGE": "b"})
    assert h1 != h0
    (root / "constraints.txt").write_text((root / "constraints.txt").read_text() + "extra==1\n")
    h2 = images.content_hash(root, dockerfile, "sha256:base", {"BASE_IMAGE": "b"})
    assert h2 != h1
    assert images.content_hash(root, dockerfile, "sha256:other", {"BASE_IMAGE": "b"}) != h2
    assert images.content_hash(root, dockerfile, "sha256:base", {"BASE_IMAGE": "c"}) != h2


def test_dockerfile_sources_reads_copy_and_bind_mounts():
    text = ("FROM x AS b\nCOPY --from=b /a /b\nCOPY pyproject.toml README.md /src/\n"
            "RUN --mount=type=bind,source=constraints.txt,target=/c \\\n"
            "    --mount=type=cache,target=/root/.cache \\\n    --mount=type=bind,source=operator,target=/o true\n")
    assert images.dockerfile_sources(text) == ["pyproject.toml", "README.md", "constraints.txt", "operator"]


@pytest.mark.parametrize("name", sorted(images.IMAGES))
def test_dockerfile_facts(name):
    text = (ROOT / images.IMAGES[name]).read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "ARG BASE_IMAGE=python:3.11-slim"
    assert lines[1] == "FROM ${BASE_IMAGE}"
    assert sum(ln.startswith("FROM") for ln in lines) == 1
    entry = [ln for ln in lines if ln.startswith("ENTRYPOINT")]
    cmd = [ln for ln in lines if ln.startswith("CMD")]
    assert len(entry) == 1 and json.loads(entry[0].split(None, 1)[1]) == ["/usr/bin/tini", "--"]
    want = {"operator": ["loraplane", "operator", "run"], "worker": ["loraplane", "worker"]}[name]
    assert len(cmd) == 1 and json.loads(cmd[0].split(None, 1)[1]) == want
    assert [ln for ln in lines if ln.startswith("USER")] == ["USER 10001:10001"]
    assert "--uid 10001 --gid 10001" in text and "--gid 10001 loraplane" in text
    assert "python3 -m venv /opt/venv" in text and "PATH=/opt/venv/bin:$PATH" in text
    assert [ln for ln in lines if "HOME=/home/loraplane" in ln] == ["ENV HOME=/home/loraplane"]
    code = "\n".join(lines)  # without comments
    for forbidden in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "PIP_NO_CACHE_DIR", "nvidia/cuda"):
        assert forbidden not in code, forbidden
    assert "-c /mnt/context/constraints.txt" in text
    # every context path the image needs is read by the build
    srcs = images.dockerfile_sources(text)
    for p in ("constraints.txt", "pyproject.toml", "README.md", "loraplane", "operator", "modelstore",
              "worker_image", "training_jobs", "perf"):
        assert p in srcs, p
    # pip is not left for run time; the hash args that invalidate buildah's layer cache are declared
    assert "pip uninstall -y pip" in text
    assert "ARG DEPS_HASH" in text and "ARG SOURCE_HASH" in text


def test_operator_image_installs_only_the_control_path():
    text = (ROOT / "Dockerfile").read_text()
    assert "--no-deps /tmp/src" in text
    assert "kopf kubernetes pydantic prometheus-client pyyaml" in text
    assert "torch" not in re.sub(r"#.*", "", text).replace("controlpath", "")
    assert "python -m loraplane.devcluster.controlpath" in text


def test_worker_image_caches_in_tmp_and_installs_quant():
    text = (ROOT / "worker_image/Dockerfile").read_text()
    assert "HF_HOME=/tmp/huggingface" in text
    assert '"/tmp/src[quant]"' in text and '["optional-dependencies"]["quant"]' in text


def test_base_tag_and_archive_names(tmp_path, monkeypatch):
    monkeypatch.setenv("LORAPLANE_CACHE", str(tmp_path))
    assert re.fullmatch(r"localhost/loraplane/base:bookworm-[0-9a-f]{12}", images.base_tag())
    assert images.base_tag() != images.base_tag(packages=("python3",))
    assert images.archive_path("worker", "ab" * 32) == tmp_path / "images" / f"worker-{'ab' * 6}.oci.tar"
    assert images.default_ctr().parts[-2:] == ("bin", "ctr")
