"""``Adapter.spec.training``: train the adapter with a Job on the GPU fleet.

The hyper-parameters are the trainer's own (``loraplane train`` flags, see
docs/training.md) in camelCase; unset ones keep the trainer's defaults, so
the two can never disagree on a default. The operator turns the block into
``loraplane train`` arguments (``core.training.train_args``), places the Job
on a GPU through the same VRAM ledger as the workers and reports progress in
``status.training``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator

from .common_types import DNS_SUBDOMAIN, IMAGE, QUANTITY, QUANTITY_RULES, STORE_SEGMENT, ApiModel, NodeSelectorTerm, Toleration, cel

_BAD_PATH = re.compile(r"(^|/)\.\.(/|$)")

#: CEL: every dataset path relative, without ``..`` segments.
DATASET_PATHS_RULE = cel("self.all(p, !p.startsWith('/') && !p.matches('(^|/)[.][.](/|$)'))",
                         "dataset paths must be relative paths without '..' segments")


class DatasetClaim(ApiModel):
    claim_name: str = Field(alias="claimName", min_length=1, max_length=253,
                            description="PersistentVolumeClaim holding the dataset (mounted read-only at /data).")


class TrainingDataset(ApiModel):
    paths: list[Annotated[str, Field(min_length=1, max_length=1024)]] = Field(min_length=1, max_length=16,
                             description="JSONL files, relative to the store root (or to the claim when "
                                         "persistentVolumeClaim is set).",
                             json_schema_extra={"x-kubernetes-validations": [DATASET_PATHS_RULE]})
    persistent_volume_claim: DatasetClaim | None = Field(
        default=None, alias="persistentVolumeClaim",
        description="Read the dataset from this PVC instead of the store volume.")

    @field_validator("paths")
    @classmethod
    def _relative(cls, v: list[str]) -> list[str]:
        for p in v:
            if not p or p.startswith("/") or _BAD_PATH.search(p):
                raise ValueError(f"dataset path {p!r} must be relative without '..' segments")
        return v


class Hyperparameters(ApiModel):
    """The trainer's weight-deciding settings; unset: the trainer's default.

    Bounds are inclusive (``ge``/``le``): crdgen copies pydantic's numeric
    ``exclusiveMinimum``, which the API server's OpenAPI v3 schema refuses."""

    r: int | None = Field(default=None, ge=1, le=1024, description="LoRA rank (trainer default 16).")
    alpha: int | None = Field(default=None, ge=1, description="LoRA alpha (default 32).")
    dropout: float | None = Field(default=None, ge=0, le=0.99, description="LoRA dropout (default 0.05).")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(default=None, alias="targetModules", max_length=32,
                                             description="Modules to adapt (default q_proj,k_proj,v_proj,o_proj).")
    learning_rate: float | None = Field(default=None, alias="learningRate", ge=1e-12, description="Default 2e-4.")
    weight_decay: float | None = Field(default=None, alias="weightDecay", ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] | None = Field(default=None, alias="lrScheduler")
    warmup_steps: int | None = Field(default=None, alias="warmupSteps", ge=0)
    epochs: float | None = Field(default=None, ge=0.001, description="Default 1; maxSteps wins.")
    max_steps: int | None = Field(default=None, alias="maxSteps", ge=1, description="Optimizer steps.")
    batch_size: int | None = Field(default=None, alias="batchSize", ge=1, le=4096, description="Micro-batch (default 4).")
    grad_accum: int | None = Field(default=None, alias="gradAccum", ge=1, description="Micro-batches per step (default 1).")
    seq_len: int | None = Field(default=None, alias="seqLen", ge=8, le=1048576, description="Max tokens (default 512).")
    gradient_checkpointing: bool | None = Field(default=None, alias="gradientCheckpointing")
    max_grad_norm: float | None = Field(default=None, alias="maxGradNorm", ge=1e-6)
    seed: int | None = None
    eval_split: float | None = Field(default=None, alias="evalSplit", ge=0, le=0.99)
    logging_steps: int | None = Field(default=None, alias="loggingSteps", ge=1)
    save_steps: int | None = Field(default=None, alias="saveSteps", ge=1)


class TrainingGpu(ApiModel):
    """Where the Job may run; the same eligibility rules as a WorkerPool's ``gpu``."""

    product: str | None = Field(default=None, min_length=1, max_length=128,
                                description="Required nvidia.com/gpu.product label value.")
    min_memory_mib: int | None = Field(default=None, alias="minMemoryMiB", ge=1)
    policy: Literal["binpack", "spread"] = "binpack"
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    node_affinity: list[NodeSelectorTerm] = Field(default_factory=list, alias="nodeAffinity", max_length=8)
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)


class TrainingResources(ApiModel):
    vram_mib: int | None = Field(default=None, alias="vramMiB", ge=1, le=1048576,
                                 description="VRAM the run needs in MiB; default derived from the method, the "
                                             "BaseModel's variant VRAM and batch x seqLen (docs/training.md).")
    cpu: str = Field(default="4", pattern=QUANTITY, max_length=64, description="CPU request of the training pod.",
                     json_schema_extra={"x-kubernetes-validations": QUANTITY_RULES})
    memory: str = Field(default="32Gi", pattern=QUANTITY, max_length=64,
                        description="Memory request (the base passes through RAM while loading).",
                        json_schema_extra={"x-kubernetes-validations": QUANTITY_RULES})


class TrainingSpec(ApiModel):
    method: Literal["lora", "qlora"] = Field(default="qlora", description="qlora: 4-bit NF4 base; lora: 16-bit base.")
    dataset: TrainingDataset
    owner: str = Field(default="default", pattern=STORE_SEGMENT, max_length=63,
                       description="ModelStore owner the adapter is published under.")
    store_name: str | None = Field(default=None, alias="storeName", pattern=STORE_SEGMENT, max_length=128,
                                   description="Adapter name in the ModelStore (default: the Adapter's name).")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters, json_schema_extra={"default": {}})
    verify_base: Literal["full", "quick", "none"] = Field(
        default="quick", alias="verifyBase",
        description="How the trainer checks the base (the BaseModel's verify Job already hashed it).")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resources: TrainingResources = Field(default_factory=TrainingResources, json_schema_extra={"default": {}})
    gpu: TrainingGpu = Field(default_factory=TrainingGpu, json_schema_extra={"default": {}})
    image: str | None = Field(default=None, min_length=1, max_length=1024, pattern=IMAGE, description="Trainer image (default: the operator's "
                                                                      "Job image).")
    service_account_name: str | None = Field(
        default=None, alias="serviceAccountName", pattern=DNS_SUBDOMAIN, max_length=253,
        description="ServiceAccount of the training pod; it needs patch on pods to publish progress.")
    backoff_limit: int = Field(default=2, alias="backoffLimit", ge=0, le=20,
                               description="Pod retries; each restarted pod resumes from the last checkpoint.")
    active_deadline_seconds: int = Field(default=86400, alias="activeDeadlineSeconds", ge=60,
                                         description="Wall-clock limit of the whole Job.")


class TrainingStatus(ApiModel):
    """Progress copied from the training pod's ``loraplane.io/training-progress``."""

    job: str | None = None
    node: str | None = None
    gpu: int | None = None
    need_mib: int | None = Field(default=None, alias="needMiB")
    phase: str | None = Field(default=None, description="Trainer phase: loading, training, ..., succeeded, failed.")
    step: int | None = None
    total_steps: int | None = Field(default=None, alias="totalSteps")
    progress: str | None = Field(default=None, description="step/total, for the printer column.")
    loss: float | None = None
    eval_loss: float | None = Field(default=None, alias="evalLoss")
    tokens_per_second: float | None = Field(default=None, alias="tokensPerSecond")
    eta_seconds: float | None = Field(default=None, alias="etaSeconds")
    updated: str | None = None
    restarts: int = Field(default=0, description="Failed pods so far (each retry resumes from its checkpoint).")
    trained_generation: int | None = Field(default=None, alias="trainedGeneration",
                                           description="Generation whose training Job succeeded.")
