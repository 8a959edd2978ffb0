import io
import json

import pytest

from loraplane.training.config import ConfigError, build_config, load_spec_file, parse_base_ref
from loraplane.training.progress import ANNOTATION, PodAnnotator, ProgressReporter, rates, should_patch


def test_annotation_key():
    assert ANNOTATION == "loraplane.io/training-progress"


def test_throttle_allows_one_patch_per_interval_plus_the_final():
    t = [0.0]
    sent = []
    ann = PodAnnotator(sent.append, interval=5.0, clock=lambda: t[0])
    rep = ProgressReporter(10, ann, out=io.StringIO())
    for i in range(1, 10):
        t[0] = i * 1.0
        rep.report(i, "training", loss=1.0 / i)
    rep.report(10, "succeeded", loss=0.1, final=True)
    steps = [json.loads(b["metadata"]["annotations"][ANNOTATION])["step"] for b in sent]
    assert steps == [1, 6, 10]
    last = json.loads(sent[-1]["metadata"]["annotations"][ANNOTATION])
    assert set(last) == {"step", "totalSteps", "loss", "evalLoss", "tokensPerSecond", "etaSeconds", "phase", "updated"}
    assert last["phase"] == "succeeded"


def test_patch_failure_never_stops_training():
    def boom(body):
        raise RuntimeError("api down")

    ann = PodAnnotator(boom)
    assert ann.update(ProgressReporter(1, out=io.StringIO()).report(1, "training"), final=True) is False
    assert ann.errors == 1


def test_stdout_line_is_json_with_extras():
    out = io.StringIO()
    ProgressReporter(4, out=out).report(2, "training", loss=0.5, tps=10.0, eta=3.0, epoch=0.5)
    rec = json.loads(out.getvalue())
    assert rec["event"] == "progress" and rec["step"] == 2 and rec["totalSteps"] == 4 and rec["epoch"] == 0.5


def test_rates_and_should_patch():
    assert rates(0, 0, 0.0, 10, 0) == (None, None)
    assert rates(2, 100, 4.0, 10, 5) == (25.0, 10.0)  # resumed at 3: 2 steps in 4 s, 5 left
    assert should_patch(None, 0.0, False) and not should_patch(1.0, 2.0, False) and should_patch(1.0, 2.0, True)


def test_config_from_camel_case_spec_with_flag_overrides(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("baseDir: /b\ndataset: /d.jsonl\noutputDir: /o\nhyperparameters:\n  loraR: 8\n"
                    "  learningRate: 0.001\n  gradientAccumulationSteps: 2\n  targetModules: q_proj,v_proj\n")
    cfg = build_config(load_spec_file(spec), {"r": 4})
    assert cfg.r == 4 and cfg.learning_rate == 0.001 and cfg.grad_accum == 2
    assert cfg.target_modules == ["q_proj", "v_proj"] and [str(p) for p in cfg.dataset] == ["/d.jsonl"]


def test_config_errors_are_collected_and_named():
    with pytest.raises(ConfigError, match="learning_rat"):
        build_config({"base_dir": "/b", "dataset": ["/d"], "output_dir": "/o", "learning_rat": 1})
    with pytest.raises(ConfigError, match="exactly one of base"):
        build_config({"dataset": ["/d"], "output_dir": "/o"})
    with pytest.raises(ConfigError, match="needs base_name"):
        build_config({"base_dir": "/b", "dataset": ["/d"], "output_dir": "/o", "publish": True, "name": "a"})


def test_parse_base_ref():
    assert parse_base_ref("me/mistral@v2") == ("me", "mistral", "v2")
    assert parse_base_ref("mistral", "team") == ("team", "mistral", None)
    with pytest.raises(ValueError):
        parse_base_ref("a/b/c")
