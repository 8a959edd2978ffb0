"""End-to-end trainer runs on CPU with the tiny Mistral (a few seconds each)."""

from __future__ import annotations

import io
import json

import pytest
import torch

from loraplane.training.config import build_config
from loraplane.training.dataset import DatasetError
from loraplane.training.summary import REQUIRED, SUMMARY_FILE
from loraplane.training.published import VersionTaken
from loraplane.training.trainer import TrainingError, train

FAST = dict(batch_size=4, seq_len=48, learning_rate=5e-3, lr_scheduler="constant", logging_steps=2, save_steps=100,
            eval_split=0.2, dropout=0.0, r=8, alpha=16, seed=0)


@pytest.fixture
def store(tmp_path, tiny_base_dir):
    from loraplane.modelstore import ModelStore

    s = ModelStore(tmp_path / "store")
    s.publish(tiny_base_dir, owner="default", kind="base", name="tiny", version="v1")
    return s


def _lines(out: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_trains_publishes_and_the_adapter_changes_outputs(tmp_path, store, dataset_file, tiny_base_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = build_config({**FAST, "base": "default/tiny@v1", "dataset": [dataset_file], "store_root": store.root,
                        "output_dir": tmp_path / "out", "max_steps": 24, "publish": True, "name": "facts",
                        "version": "v1", "task": "facts"})
    out = io.StringIO()
    res = train(cfg, store=store, out=out)

    s = res.summary
    assert not (set(REQUIRED) - set(s))
    assert s["train_loss"]["final"] < 0.75 * s["train_loss"]["first"]  # it learned
    assert s["eval_loss"]["final"] < s["eval_loss"]["initial"]
    assert s["base"]["checksum"] == store.resolve("default", "base", "tiny", "v1").manifest.checksum
    assert s["steps"] == {"total": 24, "completed": 24, "resumed_from": None}
    assert s["dataset"]["sha256"] and s["hyperparameters"]["r"] == 8 and s["library_versions"]["peft"]
    assert s["duration_seconds"] > 0 and s["tokens_trained"] > 0

    lines = _lines(out)
    training = [r for r in lines if r["phase"] == "training"]
    assert [r["step"] for r in training] == list(range(2, 25, 2))
    assert all(r["totalSteps"] == 24 and r["tokensPerSecond"] > 0 and r["etaSeconds"] is not None for r in training)
    assert lines[-1]["phase"] == "succeeded" and lines[-1]["published"] is True

    sv = store.resolve("default", "adapter", "facts")
    assert sv.version == "v1" and (sv.path / SUMMARY_FILE).is_file()
    assert sv.manifest.adapter.base_checksum == s["base"]["checksum"]
    assert store.verify("default", "adapter", "facts", "v1").ok

    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[4, 40, 41, 5]])
    before = _logits(base, ids)
    peft_logits = _logits(PeftModel.from_pretrained(base, sv.path).eval(), ids)
    assert not torch.allclose(before, peft_logits, atol=1e-4)

    # The worker's own multi-LoRA loader serves it from the store path, same outputs as PEFT.
    from loraplane.worker.lora import LoraBank

    served = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    bank = LoraBank(served, torch.float32, "cpu")
    bank.add("facts", sv.path)
    bank.set_batch(["facts"])
    assert torch.allclose(_logits(served, ids), peft_logits, atol=1e-4)
    bank.set_batch([None])
    assert torch.allclose(_logits(served, ids), before, atol=1e-5)

    # A retry of the same run (the Job's pod crashed after publishing, before it exited) finds its own
    # version in the store, verified and matching, and succeeds at once without training again.
    out = io.StringIO()
    again = train(cfg.model_copy(update={"output_dir": tmp_path / "again"}), store=store, out=out)
    assert again.manifest.checksum == sv.manifest.checksum and again.summary == json.loads(
        (sv.path / SUMMARY_FILE).read_text())
    last = _lines(out)[-1]
    assert (last["phase"], last["published"], last["alreadyPublished"]) == ("succeeded", True, True)
    assert not (tmp_path / "again").exists()
    # Another run (different hyper-parameters) under the same version is refused before any training.
    with pytest.raises(VersionTaken, match="already in the store.*learning_rate"):
        train(cfg.model_copy(update={"output_dir": tmp_path / "other", "learning_rate": 1e-3}), store=store,
              out=io.StringIO())
    assert not (tmp_path / "other").exists()


def test_bad_dataset_names_the_line_and_publishes_nothing(tmp_path, store, dataset_file):
    lines = dataset_file.read_text().splitlines()
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "only a question"}]})
    dataset_file.write_text("\n".join(lines) + "\n")
    cfg = build_config({**FAST, "base": "tiny", "dataset": [dataset_file], "store_root": store.root,
                        "output_dir": tmp_path / "out", "max_steps": 2, "publish": True, "name": "facts",
                        "version": "v1"})
    out = io.StringIO()
    with pytest.raises(DatasetError, match=r"train\.jsonl:7: no assistant message"):
        train(cfg, store=store, out=out)
    assert _lines(out)[-1]["phase"] == "failed"
    assert store.list_versions("default", "adapter", "facts") == [] if hasattr(store, "list_versions") else True
    assert not (store.root / "default" / "adapters" / "facts" / "versions" / "v1").exists()
    assert not (tmp_path / "out" / "adapter").exists()


def test_cli_reports_bad_dataset_with_exit_code_2(tmp_path, tiny_base_dir, capsys):
    from loraplane.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "a"}\n')
    rc = main(["train", "--base-dir", str(tiny_base_dir), "--dataset", str(bad), "--output-dir", str(tmp_path / "o")])
    assert rc == 2 and "bad.jsonl:2: missing field 'output'" in capsys.readouterr().err


def test_resume_continues_at_the_saved_step_and_matches_an_unbroken_run(tmp_path, tiny_base_dir, dataset_file):
    from safetensors.torch import load_file

    common = {**FAST, "base_dir": tiny_base_dir, "dataset": [dataset_file], "max_steps": 6, "dropout": 0.1,
              "grad_accum": 2}
    whole = train(build_config({**common, "output_dir": tmp_path / "whole"}), out=io.StringIO())

    sliced = build_config({**common, "output_dir": tmp_path / "sliced", "stop_after_steps": 3})
    first = train(sliced, out=io.StringIO())
    assert first.stopped_early and first.step == 3 and first.adapter_dir is None
    ckpts = tmp_path / "sliced" / "checkpoints"
    assert (ckpts / "latest").read_text() == "step-3"
    assert json.loads((ckpts / "step-3" / "meta.json").read_text())["step"] == 3

    out = io.StringIO()
    rest = train(sliced.model_copy(update={"stop_after_steps": None}), out=out)
    assert rest.summary["steps"]["resumed_from"] == 3
    assert [r["step"] for r in _lines(out) if r["phase"] == "training" and "loss" in r and r["loss"]] == [4, 6]
    a = load_file(whole.adapter_dir / "adapter_model.safetensors")
    b = load_file(rest.adapter_dir / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert rest.summary["train_loss"]["history"] == whole.summary["train_loss"]["history"]


def test_checkpoint_from_another_run_is_refused(tmp_path, tiny_base_dir, dataset_file):
    from loraplane.training.checkpoint import CheckpointError

    common = {**FAST, "base_dir": tiny_base_dir, "dataset": [dataset_file], "output_dir": tmp_path / "o",
              "max_steps": 2, "stop_after_steps": 1}
    train(build_config(common), out=io.StringIO())
    with pytest.raises(CheckpointError, match="different run"):
        train(build_config({**common, "learning_rate": 1e-2}), out=io.StringIO())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_qlora_without_cuda_is_a_clear_error(tmp_path, tiny_base_dir, dataset_file):
    from loraplane.training.modeling import MethodUnavailable

    cfg = build_config({**FAST, "method": "qlora", "base_dir": tiny_base_dir, "dataset": [dataset_file],
                        "output_dir": tmp_path / "o", "max_steps": 1})
    with pytest.raises(MethodUnavailable, match="qlora needs a CUDA GPU"):
        train(cfg, out=io.StringIO())


def test_qlora_path_on_cpu_trains_a_4bit_base_and_yields_a_plain_lora_adapter(tmp_path, dataset_file):
    """The real QLoRA code (NF4 load, prepare_model_for_kbit_training, LoRA on
    Linear4bit) through bitsandbytes' CPU path, opted into with device=cpu."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loraplane.tiny_model import build_base

    # bitsandbytes' CPU 4-bit inference kernel needs out_features % 32 == 0 (688 is not).
    tiny_base_dir = build_base(tmp_path / "base", intermediate_size=704)
    cfg = build_config({**FAST, "method": "qlora", "device": "cpu", "base_dir": tiny_base_dir,
                        "dataset": [dataset_file], "output_dir": tmp_path / "o", "max_steps": 8,
                        "gradient_checkpointing": True})
    res = train(cfg, out=io.StringIO())
    s = res.summary
    assert s["method"] == "qlora" and s["dtype"] == "bfloat16"
    assert s["train_loss"]["final"] < s["train_loss"]["first"]
    cfg_json = json.loads((res.adapter_dir / "adapter_config.json").read_text())
    assert cfg_json["r"] == 8 and sorted(cfg_json["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    base = AutoModelForCausalLM.from_pretrained(tiny_base_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[4, 40, 41, 5]])
    before = _logits(base, ids)
    assert not torch.allclose(before, _logits(PeftModel.from_pretrained(base, res.adapter_dir).eval(), ids), atol=1e-4)


def test_job_path_spec_file_env_store_and_pod_annotation(tmp_path, store, dataset_file, monkeypatch, capsys):
    """What a Job runs: `loraplane train --spec` with camelCase keys, the store
    from MODEL_STORE_ROOT, POD_NAME/POD_NAMESPACE from the downward API."""
    import kubernetes

    from loraplane.cli import main
    from loraplane.training.progress import ANNOTATION

    patches = []

    class FakeCoreV1:
        def patch_namespaced_pod(self, name, namespace, body):
            patches.append((name, namespace, body))

    monkeypatch.setattr(kubernetes.config, "load_incluster_config", lambda: None)
    monkeypatch.setattr(kubernetes.client, "CoreV1Api", FakeCoreV1)
    monkeypatch.setenv("POD_NAME", "train-facts-v2-abcde")
    monkeypatch.setenv("POD_NAMESPACE", "ml")
    monkeypatch.setenv("MODEL_STORE_ROOT", str(store.root))
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        f"base: default/tiny\ndataset: {dataset_file}\nadapterName: facts\nadapterVersion: v2\ntask: facts\n"
        f"publish: true\nhyperparameters:\n  loraR: 4\n  loraAlpha: 8\n  maxSteps: 3\n  batchSize: 4\n"
        f"  seqLen: 48\n  loggingSteps: 1\n"
    )
    assert main(["train", "--spec", str(spec), "--learning-rate", "1e-3"]) == 0

    sv = store.resolve("default", "adapter", "facts", "v2")
    summary = json.loads((sv.path / SUMMARY_FILE).read_text())
    assert summary["hyperparameters"]["r"] == 4 and summary["hyperparameters"]["learning_rate"] == 1e-3
    # Default output dir lives on the store volume, keyed by the adapter, so a restarted pod resumes.
    assert (store.root / ".training" / "default" / "facts" / "v2" / "checkpoints" / "latest").is_file()
    assert all(p[:2] == ("train-facts-v2-abcde", "ml") for p in patches)
    states = [json.loads(p[2]["metadata"]["annotations"][ANNOTATION]) for p in patches]
    assert states[0]["phase"] == "loading" and states[-1]["phase"] == "succeeded" and states[-1]["step"] == 3
    assert len(states) < 6  # throttled: 1 per 5 s plus the final, not one per line
    printed = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [r["step"] for r in printed if r["phase"] == "training"] == [1, 2, 3]


def test_sigterm_checkpoints_the_current_step_and_a_rerun_resumes(tmp_path, tiny_base_dir, dataset_file):
    import os
    import signal
    import subprocess
    import sys

    out_dir = tmp_path / "o"
    cmd = [sys.executable, "-m", "loraplane.cli", "train", "--base-dir", str(tiny_base_dir), "--dataset",
           str(dataset_file), "--output-dir", str(out_dir), "--max-steps", "100000", "--logging-steps", "1",
           "--batch-size", "2", "--seq-len", "32", "--save-steps", "100000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in proc.stdout:  # wait until it is really training
            if '"phase":"training"' in line:
                break
        os.kill(proc.pid, signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    last = json.loads(rest.strip().splitlines()[-1])
    assert last["phase"] == "stopped" and last["signal"] == "SIGTERM"
    step = int((out_dir / "checkpoints" / "latest").read_text().removeprefix("step-"))
    assert step == last["step"] >= 1
    # A restarted pod (same args) picks it up.
    cfg = build_config({"base_dir": tiny_base_dir, "dataset": [dataset_file], "output_dir": out_dir,
                        "max_steps": 100000, "logging_steps": 1, "batch_size": 2, "seq_len": 32,
                        "save_steps": 100000, "stop_after_steps": step + 1})
    res = train(cfg, out=io.StringIO())
    assert res.step == step + 1


def test_publishing_from_a_base_dir_checks_it_is_the_named_store_base(tmp_path, store, dataset_file, tiny_base_dir):
    import shutil

    from loraplane.training.base import BaseModelError

    other = tmp_path / "other-base"
    shutil.copytree(tiny_base_dir, other)
    (other / "config.json").write_text((other / "config.json").read_text().replace("\n", "\n "))
    common = {**FAST, "dataset": [dataset_file], "store_root": store.root, "max_steps": 2, "publish": True,
              "name": "facts", "version": "v9", "base_name": "tiny"}
    with pytest.raises(BaseModelError, match="config.json is different"):
        train(build_config({**common, "base_dir": other, "output_dir": tmp_path / "a"}), store=store,
              out=io.StringIO())
    res = train(build_config({**common, "base_dir": tiny_base_dir, "output_dir": tmp_path / "b"}), store=store,
                out=io.StringIO())
    assert res.summary["base"]["checksum"] == store.resolve("default", "base", "tiny").manifest.checksum
    assert store.resolve("default", "adapter", "facts", "v9").manifest.adapter.base_checksum == \
        res.summary["base"]["checksum"]
