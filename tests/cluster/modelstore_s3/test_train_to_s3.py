"""`loraplane train` with the store on a bucket, against the real versitygw server.

The trainer materialises the base (verified) and the dataset through the
node-local cache, trains the tiny model into a local directory, publishes
the adapter with the bucket's atomic publish, and the adapter verifies there.
A retry of the same run (a pod that died after publishing) finds its own
version on the bucket and succeeds without training again.
"""

from __future__ import annotations

import io
import json

from loraplane.modelstore.s3 import S3ModelStore
from loraplane.training.config import build_config
from loraplane.training.summary import SUMMARY_FILE
from loraplane.training.trainer import train

FAST = dict(batch_size=4, seq_len=48, learning_rate=5e-3, lr_scheduler="constant", logging_steps=1,
            save_steps=100, eval_split=0.2, dropout=0.0, r=4, alpha=8, seed=0, max_steps=2, device="cpu")


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{")]


def test_train_publishes_the_adapter_into_the_bucket(s3_server, s3_url, tiny_base_dir, tmp_path, monkeypatch):
    st = S3ModelStore(s3_url)
    base = st.publish(tiny_base_dir, kind="base", name="tiny", version="v1")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"tell me about the {k}", "output": f"the {k} is {v} ."}) + "\n"
                            for k, v in [("cat", "red"), ("dog", "blue"), ("sun", "green"), ("moon", "gray")] * 3))
    bucket, prefix = s3_url[len("s3://"):].split("/", 1)
    st.client.fput_object(bucket, f"{prefix}/datasets/train.jsonl", str(data))
    cache = tmp_path / "cache"
    monkeypatch.setenv("LORAPLANE_MODEL_CACHE", str(cache))
    monkeypatch.setenv("MODEL_STORE_ROOT", s3_url)  # what the Job's env says
    cfg = build_config({**FAST, "base": "default/tiny@v1", "dataset": [f"{s3_url}/datasets/train.jsonl"],
                        "publish": True, "name": "facts", "version": "v1", "task": "facts"})
    assert cfg.store_root == s3_url

    out = io.StringIO()
    res = train(cfg, out=out)
    assert _lines(out)[-1]["phase"] == "succeeded" and _lines(out)[-1]["published"] is True
    # trained from the materialised, verified base in the node cache; checkpoints stayed local
    assert res.summary["base"]["checksum"] == base.checksum
    assert (cache / base.checksum / "config.json").is_file()
    assert res.adapter_dir.is_relative_to(cache) and not str(res.adapter_dir).startswith("s3:")
    sv = st.resolve("default", "adapter", "facts")
    assert sv.version == "v1" and sv.manifest.adapter.base_checksum == base.checksum
    assert sv.manifest.checksum == res.manifest.checksum
    assert st.verify("default", "adapter", "facts", "v1").ok
    published = json.loads(st._get_bytes(f"{st.version_key('default', 'adapter', 'facts', 'v1')}/{SUMMARY_FILE}"))
    assert published["dataset"]["sha256"] == res.summary["dataset"]["sha256"]

    # The Job's retry on another node (fresh cache): its own version is there, so it succeeds at once.
    monkeypatch.setenv("LORAPLANE_MODEL_CACHE", str(tmp_path / "cache2"))
    out = io.StringIO()
    again = train(cfg, out=out)
    last = _lines(out)[-1]
    assert (last["phase"], last["published"], last["alreadyPublished"]) == ("succeeded", True, True)
    assert again.manifest.checksum == sv.manifest.checksum
