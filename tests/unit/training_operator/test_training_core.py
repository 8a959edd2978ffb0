"""The pure training core: the Job manifest, the VRAM need, the Adapter phase
from Job/pod status (with the failure reason) and the progress fold."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest
from pydantic import ValidationError

from loraplane.operator.core import placement as pl
from loraplane.operator.api.adapter_types import AdapterSpec, AdapterStatus
from loraplane.operator.api.observed_types import JobView, PodView
from loraplane.operator.core.inventory import reservations
from loraplane.operator.api.resources import AdapterResource, BaseModelResource, as_read, dump
from loraplane.operator.api.training_types import TrainingSpec, TrainingStatus
from loraplane.operator.core import training as core
from loraplane.operator.core.training import (
    GENERATION_LABEL, PROGRESS_ANNOTATION, failure_reason, fold_progress,
)
from loraplane.training.config import build_config
from loraplane.training.progress import ANNOTATION
from loraplane.training.cli import configure, overrides_from_args

NOW = dt.datetime(2026, 11, 23, 20, 0, tzinfo=dt.timezone.utc)
VARIANTS = {"fp16": 14336, "bnb-int8": 7680, "bnb-4bit": 4352}


def adapter(gen=1, **training):
    t = {"method": "qlora", "dataset": {"paths": ["datasets/synth.jsonl"]},
         "hyperparameters": {"maxSteps": 60, "batchSize": 1, "gradAccum": 8, "gradientCheckpointing": True,
                             "targetModules": ["q_proj", "v_proj"], "learningRate": 0.0002, "evalSplit": 0.05},
         **training}
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter",
            "metadata": {"name": "synth-v3", "namespace": "ns", "uid": "uid-1", "generation": gen},
            "spec": {"baseModelRef": "mistral", "task": "synthesizer", "version": "v3", "training": t}}


def base(phase="Ready"):
    return {"apiVersion": "loraplane.io/v1alpha1", "kind": "BaseModel", "metadata": {"name": "mistral"},
            "spec": {"owner": "default", "storeName": "mistral-7b-instruct", "version": "v0.3",
                     "store": {"persistentVolumeClaim": {"claimName": "store", "readOnly": True},
                               "mountPath": "/models"}},
            "status": {"phase": phase, "checksum": "c" * 64,
                       "variants": [{"name": k, "vramMiB": v} for k, v in VARIANTS.items()]}}


# The core takes parsed objects (as the controller hands them over); the tests write them as the
# API server holds them and parse them here.
def stored(obj):
    """After our merge patches the API server holds no nulls."""
    if isinstance(obj, dict):
        return {k: stored(v) for k, v in obj.items() if v is not None}
    return [stored(v) for v in obj] if isinstance(obj, list) else obj


def _a(a):
    return AdapterResource.model_validate(stored(a)) if isinstance(a, dict) else a


def _b(b):
    return BaseModelResource.model_validate(b) if isinstance(b, dict) else b


def derive_need(training, variants):
    return core.derive_need(TrainingSpec.model_validate({"dataset": {"paths": ["d.jsonl"]}, **training}), variants)


def train_args(a, b, mount):
    return core.train_args(_a(a), _b(b), mount)


def training_job(a, b, *args, **kw):
    return core.training_job(_a(a), _b(b), *args, **kw)


def train_job_name(a):
    return core.train_job_name(_a(a))


def plan_training(a, b, *args):
    return core.plan_training(_a(a), None if b is None else _b(b), *args)


def placement_request(a, need):
    return core.placement_request(_a(a), need)


def placed(a, *args):
    return core.placed(_a(a), *args)


def unplaced(a, *args):
    return core.unplaced(_a(a), *args)


def verify_view(a):
    return dump(core.verify_view(_a(a), _a(a).status))


def ws(plan):
    """A training plan's typed status as the controller patches it (``as_read``)."""
    assert isinstance(plan.status, AdapterStatus)
    return as_read(plan.status)


def test_the_progress_annotation_is_the_trainers():
    assert PROGRESS_ANNOTATION == ANNOTATION


def test_spec_types_validate_and_refuse_escaping_dataset_paths():
    AdapterSpec.model_validate(adapter()["spec"])
    for bad in ("/etc/passwd", "../x.jsonl", "a/../../b"):
        spec = adapter(dataset={"paths": [bad]})["spec"]
        with pytest.raises(ValidationError, match="relative"):
            AdapterSpec.model_validate(spec)
    with pytest.raises(ValidationError):
        AdapterSpec.model_validate(adapter(hyperparameters={"lr": 1})["spec"])  # unknown key refused


# --- need ------------------------------------------------------------------------------------------
def test_declared_need_wins():
    assert derive_need({"resources": {"vramMiB": 9000}}, VARIANTS).mib == 9000


def test_derived_need_qlora_is_4bit_base_plus_lora_plus_activations():
    n = derive_need({"method": "qlora", "hyperparameters": {"gradientCheckpointing": True}}, VARIANTS)
    # 4352 + 3.25*16*4 + 0.75*4*512 + 1024
    assert n.mib == 4352 + 208 + 1536 + 1024 and "base 4352" in n.detail
    no_gc = derive_need({"method": "qlora"}, VARIANTS)
    assert no_gc.mib > n.mib  # activations of every layer kept
    lora = derive_need({"method": "lora", "hyperparameters": {"gradientCheckpointing": True}}, VARIANTS)
    assert lora.mib - n.mib == 14336 - 4352  # same run on the 16-bit base


def test_derived_need_grows_with_tokens_and_rank_and_needs_a_variant():
    small = derive_need({"method": "qlora", "hyperparameters": {"batchSize": 1, "seqLen": 512}}, VARIANTS).mib
    big = derive_need({"method": "qlora", "hyperparameters": {"batchSize": 8, "seqLen": 2048}}, VARIANTS).mib
    assert big > small
    r64 = derive_need({"method": "qlora", "hyperparameters": {"r": 64, "batchSize": 1}}, VARIANTS).mib
    assert r64 > small
    # No bnb-4bit measured: NF4 estimated at 0.3 x fp16.
    assert derive_need({"method": "qlora"}, {"fp16": 10000}).detail.startswith("derived")
    with pytest.raises(ValueError, match="vramMiB"):
        derive_need({"method": "lora"}, {})


# --- the Job ---------------------------------------------------------------------------------------
def test_job_manifest():
    a = adapter(backoffLimit=3, activeDeadlineSeconds=7200, image="trainer:1")
    job = training_job(a, base(), train_job_name(a), "node-a", 1, 7120, "default:img")
    assert job["metadata"]["name"] == "adp-synth-v3-train-g1-a0"
    assert job["metadata"]["ownerReferences"][0] == {"apiVersion": "loraplane.io/v1alpha1", "kind": "Adapter",
                                                     "name": "synth-v3", "uid": "uid-1", "controller": True,
                                                     "blockOwnerDeletion": True}
    assert job["metadata"]["labels"][GENERATION_LABEL] == "1"
    spec = job["spec"]
    assert spec["backoffLimit"] == 3 and spec["activeDeadlineSeconds"] == 7200
    assert spec["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2]
    pod = spec["template"]
    res = json.loads(pod["metadata"]["annotations"]["loraplane.io/reservation"])
    assert res == {"node": "node-a", "gpu": 1, "vramMiB": 7120, "variant": "training-qlora"}
    assert pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchFields"][0]["values"] == ["node-a"]
    c = pod["spec"]["containers"][0]
    assert c["image"] == "trainer:1" and pod["spec"]["restartPolicy"] == "Never"
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["NVIDIA_VISIBLE_DEVICES"]["value"] == "1" and env["MODEL_STORE_ROOT"]["value"] == "/models"
    # The trainer publishes: the store PVC is mounted read-write even when workers mount it read-only.
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "store", "readOnly": False}
    # The pod is counted by the same ledger as workers.
    pod_obj = {"metadata": {"name": "x", "namespace": "ns", "annotations": pod["metadata"]["annotations"]},
               "spec": {}, "status": {"phase": "Running"}}
    node = pl.NodeInfo("node-a", gpu_count=2, gpu_memory_mib=24576)
    assert reservations([PodView.from_api(pod_obj)], [node]) == [pl.Reservation("node-a", 1, 7120, "ns/x")]


def test_job_argv_is_accepted_by_the_trainer_cli():
    """The Job's argv parses with ``loraplane train``'s own parser into the intended config."""
    import argparse

    a = adapter(dataset={"paths": ["a.jsonl", "b/c.jsonl"], "persistentVolumeClaim": {"claimName": "data"}})
    argv = train_args(a, base(), "/models")
    assert argv[:2] == ["loraplane", "train"]
    p = argparse.ArgumentParser()
    configure(p)
    args = p.parse_args(argv[2:])
    cfg = build_config({}, overrides_from_args(args))
    assert cfg.method == "qlora" and cfg.base == "default/mistral-7b-instruct@v0.3"
    assert [str(d) for d in cfg.dataset] == ["/data/a.jsonl", "/data/b/c.jsonl"]
    assert cfg.version == "v3" and cfg.name == "synth-v3" and cfg.publish and cfg.verify_base == "quick"
    assert cfg.max_steps == 60 and cfg.grad_accum == 8 and cfg.gradient_checkpointing
    assert cfg.target_modules == ["q_proj", "v_proj"] and cfg.eval_split == 0.05
    job = training_job(a, base(), "j", "n", 0, 1, "img")
    mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert {"name": "dataset", "mountPath": "/data", "readOnly": True} in mounts


def test_placement_shares_the_ledger_with_workers():
    node = pl.NodeInfo("n", gpu_count=1, gpu_memory_mib=24576)
    worker = pl.Reservation("n", 0, 10752, "ns/p-0", "ns/p")
    fits = pl.place([node], [worker], [placement_request(adapter(), 12000)])[0]
    assert fits.placed and fits.need_mib == 12000
    too_big = pl.place([node], [worker], [placement_request(adapter(), 14000)])[0]
    assert not too_big.placed and "needs 13.7 GiB" in too_big.message
    off = pl.place([node], [], [placement_request(adapter(gpu={"nodeSelector": {"pool": "train"}}), 1000)])[0]
    assert not off.placed and "off nodeSelector" in off.message


# --- phase -----------------------------------------------------------------------------------------
def job_obj(name="adp-synth-v3-train-g1-a0", gen=1, **status):
    return {"metadata": {"name": name, "labels": {GENERATION_LABEL: str(gen)}}, "status": status}


def pod_obj(name, phase, created="2026-11-23T20:00:00Z", progress=None, term=None):
    ann = {PROGRESS_ANNOTATION: json.dumps(progress)} if progress else {}
    cs = [{"state": {"terminated": term}}] if term else []
    return {"metadata": {"name": name, "creationTimestamp": created, "annotations": ann},
            "status": {"phase": phase, "containerStatuses": cs}}


def test_pending_until_the_base_is_ready_then_place():
    p = plan_training(adapter(), None, [], NOW)
    assert ws(p)["phase"] == "Pending" and not p.place
    p = plan_training(adapter(), base("Verifying"), [], NOW)
    assert ws(p)["phase"] == "Pending" and not p.place and p.requeue_after
    p = plan_training(adapter(), base(), [], NOW)
    assert p.place and p.need.mib == derive_need(adapter()["spec"]["training"], VARIANTS).mib
    done = placed(adapter(), p, pl.Decision("w", "n", 0, "training-qlora", p.need.mib), NOW)
    assert ws(done)["phase"] == "Training" and ws(done)["training"]["node"] == "n"
    assert done.events[0][1] == "TrainingStarted"
    p = plan_training(adapter(), base(), [], NOW)
    un = unplaced(adapter(), p, pl.Decision("w", message="needs 7 GiB"), NOW)
    assert ws(un)["phase"] == "Pending" and "no GPU has room" in ws(un)["conditions"][0]["message"]


def test_running_job_folds_progress_from_the_newest_pod():
    progress = {"step": 20, "totalSteps": 60, "loss": 4.08, "evalLoss": None, "tokensPerSecond": 3710.2,
                "etaSeconds": 5.1, "phase": "training", "updated": "2026-11-23T19:37:18Z"}
    old = pod_obj("j-1", "Failed", "2026-11-23T19:00:00Z", progress={**progress, "step": 10},
                  term={"exitCode": 137, "reason": "Error"})
    new = pod_obj("j-2", "Running", "2026-11-23T19:10:00Z", progress=progress)
    js = JobView.from_api(job_obj(failed=1, active=1), [new, old])
    p = plan_training(adapter(), base(), [js], NOW)
    t = ws(p)["training"]
    assert ws(p)["phase"] == "Training" and t["step"] == 20 and t["progress"] == "20/60"
    assert t["loss"] == 4.08 and t["etaSeconds"] == 5.1 and t["restarts"] == 1
    msg = next(c for c in ws(p)["conditions"] if c["type"] == "Progressing")["message"]
    assert "step 20/60" in msg and "resumed" in msg
    # A restarted pod that has not reported yet keeps the last known progress.
    fresh = pod_obj("j-3", "Pending", "2026-11-23T19:20:00Z")
    assert fold_progress(TrainingStatus(), JobView.from_api(job_obj(), [old, fresh])).step == 10


def test_failed_job_ends_failed_with_the_pods_reason_and_is_not_retried():
    term = {"exitCode": 2, "reason": "Error",
            "message": "Traceback ...\nloraplane train: data.jsonl:2: invalid JSON (Expecting value)"}
    js = JobView.from_api(job_obj(conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}]),
                   [pod_obj("j-1", "Failed", term=term)])
    p = plan_training(adapter(), base(), [js], NOW)
    ready = next(c for c in ws(p)["conditions"] if c["type"] == "Ready")
    assert ws(p)["phase"] == "Failed" and ready["reason"] == "TrainingFailed"
    assert "data.jsonl:2: invalid JSON" in ready["message"] and p.events[0][0] == "Warning"
    assert not p.place and p.requeue_after is None
    # Once Failed (even after the Job's TTL removed it), the generation is not retrained.
    again = plan_training({**adapter(), "status": ws(p)}, base(), [], NOW)
    assert not again.place and ws(again)["phase"] == "Failed"
    # ... but a new generation starts over.
    assert plan_training({**adapter(gen=2), "status": ws(p)}, base(), [], NOW).place


def test_failure_reason_fallbacks():
    oom = JobView.from_api(job_obj(), [pod_obj("j-1", "Failed", term={"exitCode": 137, "reason": "OOMKilled"})])
    assert "OOMKilled with exit code 137" in failure_reason(oom) and "batchSize" in failure_reason(oom)
    deadline = JobView.from_api(job_obj(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                              "message": "Job was active longer than specified deadline"}]), [])
    assert failure_reason(deadline) == "DeadlineExceeded: Job was active longer than specified deadline"


def test_succeeded_job_hands_over_to_verification():
    js = JobView.from_api(job_obj(conditions=[{"type": "Complete", "status": "True"}], succeeded=1),
                   [pod_obj("j-1", "Succeeded", progress={"step": 60, "totalSteps": 60, "phase": "succeeded"})])
    p = plan_training(adapter(), base(), [js], NOW)
    assert p.verify and ws(p)["training"]["trainedGeneration"] == 1 and p.events[0][1] == "Trained"
    # Later passes go straight to verification, whatever became of the Job.
    again = plan_training({**adapter(), "status": ws(p)}, base(), [], NOW)
    assert again.verify and not again.place
    view = verify_view(adapter())
    assert view["spec"]["source"] == {"owner": "default", "storeName": "synth-v3"} and "training" not in view["spec"]


def test_the_verify_step_is_the_source_adapters():
    from loraplane.operator.core.resolve import World, plan_adapter

    a = {**adapter(), "status": {"observedGeneration": 1, "training": {"trainedGeneration": 1}}}
    plan = plan_adapter(core.verify_view(_a(a), _a(a).status),
                        World(now=NOW, base=BaseModelResource.model_validate(base())), lambda n: 5.0)
    status = as_read(plan.status)  # as the controller patches it
    assert plan.create_job == "verify" and status["storePath"] == "default/adapters/synth-v3/versions/v3"
    assert status["training"] == {"trainedGeneration": 1}


def test_older_generation_jobs_are_deleted():
    old = JobView.from_api(job_obj("adp-synth-v3-train-g1-a0", gen=1, active=1), [])
    p = plan_training(adapter(gen=2), base(), [old], NOW)
    assert p.delete_jobs == ["adp-synth-v3-train-g1-a0"] and p.place


def test_plan_is_pure():
    a = adapter()
    snapshot = copy.deepcopy(a)
    plan_training(a, base(), [], NOW)
    assert a == snapshot


def test_workers_load_a_trained_adapter_from_its_training_store_identity():
    from loraplane.operator.core.pool import _adapter_ref

    a = adapter(owner="team", storeName="synth")
    a["status"] = {"checksum": "d" * 64}
    ref = _adapter_ref("synth-v3", AdapterResource.model_validate(a))
    assert (ref.owner, ref.store_name, ref.version) == ("team", "synth", "v3")
    job = training_job(a, base(), "j", "n", 0, 1, "img")
    argv = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert argv[argv.index("--owner") + 1] == "team" and argv[argv.index("--name") + 1] == "synth"


def test_a_malformed_progress_annotation_reads_as_no_progress():
    """The trainer's annotation is parsed once (``TrainingPodView``): not JSON, or JSON that is not
    an object, is no progress rather than an error in the core."""
    for raw in ("not json", "[1, 2]", "7"):
        pod = {"metadata": {"name": "j-1", "annotations": {PROGRESS_ANNOTATION: raw}}, "status": {"phase": "Running"}}
        js = JobView.from_api(job_obj(active=1), [pod])
        assert js.pods[0].progress is None
        assert fold_progress(TrainingStatus(), js).step is None
