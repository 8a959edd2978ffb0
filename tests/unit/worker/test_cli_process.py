"""`loraplane worker` as a real process: serves, then drains on SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url, data=None):
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data else None,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def test_worker_process_serves_and_drains(worker_store, tmp_path, helpers):
    doc = helpers.desired({"synthesizer": [("synth-v1", 100)]}, adapters=[("synth-v1", "synth", "v1", "synthesizer")])
    f = tmp_path / "desired.json"
    f.write_text(doc.to_json())
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("POD_NAME", "LORAPLANE_DESIRED_CONFIGMAP")}
    proc = subprocess.Popen([sys.executable, "-m", "loraplane.cli", "worker", "--store-root", str(worker_store),
                             "--desired-file", str(f), "--port", str(port), "--host", "127.0.0.1", "--device", "cpu", "--threads", "1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        status = None
        while time.time() < deadline:
            try:
                status, body = _get(base + "/readyz")
                if status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert status == 200, body
        code, out = _get(base + "/v1/completions", {"model": "synthesizer", "prompt": "hello world", "max_tokens": 3})
        assert code == 200 and out["adapter"] == "synth-v1"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
