"""A real S3 server for the ModelStore's S3 tests: versitygw built from its Go
module (``make s3-server``; loraplane/devcluster/s3_build.py), started once per
session on a free loopback port with the posix backend in a temporary
directory (objects are plain files there, so a test can flip a byte "on the
server's disk"). No mock: every call goes over HTTP to that process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

ACCESS, SECRET = "loraplane-test", "loraplane-test-secret-0123456789"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str
    data_dir: Path
    proc: subprocess.Popen
    access_log: Path

    def log_mark(self) -> int:
        """Where the server's access log ends now (pass to ``requests_since``)."""
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def requests_since(self, mark: int) -> list[str]:
        """Access-log lines the SERVER wrote after ``mark``: what really reached it."""
        time.sleep(0.3)  # the log is written after the response
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            return [line.decode(errors="replace") for line in f.read().splitlines() if line.strip()]

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS, "AWS_SECRET_ACCESS_KEY": SECRET}

    def client(self):
        from loraplane.modelstore.s3 import client_from_env

        return client_from_env(self.env)

    def bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().make_bucket(name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from loraplane.devcluster import s3_build

    binary = s3_build.binary()
    data = tmp_path_factory.mktemp("s3-data")
    port = _free_port()
    log = open(data.parent / "versitygw.log", "wb")
    access_log = data.parent / "access.log"
    proc = subprocess.Popen([str(binary), "--access", ACCESS, "--secret", SECRET, "--port", f"127.0.0.1:{port}",
                             "--access-log", str(access_log), "--quiet", "posix", str(data)],
                            stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"versitygw did not start (exit {proc.poll()}); see {log.name}")
            time.sleep(0.1)
    server = S3Server(f"http://127.0.0.1:{port}", data, proc, access_log)
    yield server
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server.env


@pytest.fixture
def s3_url(s3_server, s3_env) -> str:
    return f"s3://{s3_server.bucket()}/store"
