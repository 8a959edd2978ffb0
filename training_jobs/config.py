"""Training configuration: one validated object built from a spec file and flags.

Why one object: the same trainer runs locally (``loraplane train``) and in a
Kubernetes Job (where the operator hands it a spec file), so both paths must
end in the same validated config. Keys may be snake_case (flag names) or
camelCase (the Adapter's ``spec.training`` style); a nested
``hyperparameters`` block is flattened. Unknown keys are refused so a typo
never silently trains with a default.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

STORE_ROOT_ENV = "MODEL_STORE_ROOT"  # same variable the ModelStore reads
CACHE_ENV = "LORAPLANE_MODEL_CACHE"  # the node-local cache an S3 store is materialised into


def is_s3(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def _path_or_url(value: Any) -> Any:
    """``s3://bucket/prefix`` stays a string (a Path would fold its ``//``); anything else is a Path."""
    return value if value is None or is_s3(value) else Path(value)
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


class ConfigError(ValueError):
    """The training configuration is incomplete or contradictory."""


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # What to train on / from.
    method: Literal["lora", "qlora"] = "lora"
    base: str | None = None  # "owner/name[@version]" or "name[@version]" in the ModelStore
    base_dir: Path | None = None  # or a local model directory
    dataset: list[str | Path] = Field(default_factory=list)  # JSONL files (local, or s3:// on the store's bucket)
    # Where it goes.
    store_root: str | Path | None = None  # a directory, or s3://bucket/prefix
    output_dir: Path | None = None
    publish: bool = False
    force: bool = False
    owner: str = "default"
    name: str | None = None  # adapter name
    version: str | None = None
    task: str | None = None
    base_name: str | None = None  # store base the adapter belongs to (with --base-dir)
    base_version: str | None = None
    verify_base: Literal["full", "quick", "none"] = "full"
    # LoRA.
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    # Optimisation.
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # wins over epochs
    batch_size: int = Field(4, ge=1)
    grad_accum: int = Field(1, ge=1)
    seq_len: int = Field(512, ge=8)
    gradient_checkpointing: bool = False
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    eval_split: float = Field(0.1, ge=0.0, lt=1.0)
    # Runtime.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(50, ge=1)
    resume: bool = True
    stop_after_steps: int | None = Field(None, ge=1)  # checkpoint and exit after this step

    @field_validator("store_root")
    @classmethod
    def _root(cls, v: Any) -> Any:
        return _path_or_url(v)

    @field_validator("dataset")
    @classmethod
    def _datasets(cls, v: list) -> list:
        return [_path_or_url(p) for p in v]

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.store_root is None and os.environ.get(STORE_ROOT_ENV):
            self.store_root = _path_or_url(os.environ[STORE_ROOT_ENV])
        if not self.dataset:
            raise ValueError("dataset: at least one JSONL file is required")
        if (self.base is None) == (self.base_dir is None):
            raise ValueError("give exactly one of base (a ModelStore ref) or base_dir (a local directory)")
        if self.base is not None:
            parse_base_ref(self.base, self.owner)
        if not self.target_modules:
            raise ValueError("target_modules: at least one module name is required")
        if self.publish:
            if not self.name:
                raise ValueError("publish needs name (the adapter's name in the ModelStore)")
            if self.base_dir is not None and not self.base_name:
                raise ValueError("publish with base_dir needs base_name (the store base the adapter belongs to)")
        if self.output_dir is None and self.store_root is None:
            raise ValueError("give output_dir (or store_root, under which a default output dir is made)")
        return self


_REF = re.compile(r"^(?:(?P<owner>[^/@\s]+)/)?(?P<name>[^/@\s]+)(?:@(?P<version>[^/@\s]+))?$")


def parse_base_ref(ref: str, default_owner: str = "default") -> tuple[str, str, str | None]:
    """``owner/name@version`` -> (owner, name, version or None for `current`)."""
    m = _REF.match(ref.strip())
    if not m:
        raise ValueError(f"base {ref!r}: expected owner/name[@version]")
    return m["owner"] or default_owner, m["name"], m["version"]


def _snake(key: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).replace("-", "_").lower()


# Spellings people (and the CRD) naturally use for the same field.
ALIASES = {
    "lora_r": "r",
    "rank": "r",
    "lora_alpha": "alpha",
    "lora_dropout": "dropout",
    "lr": "learning_rate",
    "num_epochs": "epochs",
    "gradient_accumulation": "grad_accum",
    "gradient_accumulation_steps": "grad_accum",
    "sequence_length": "seq_len",
    "max_seq_len": "seq_len",
    "train_batch_size": "batch_size",
    "train_files": "dataset",
    "adapter_name": "name",
    "adapter_version": "version",
}


def normalize_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Flatten ``hyperparameters``/``lora`` blocks, snake-case keys, apply aliases."""
    flat: dict[str, Any] = {}
    for key, value in spec.items():
        if key in ("hyperparameters", "hyperParameters", "lora") and isinstance(value, dict):
            flat.update(normalize_spec(value))
            continue
        k = _snake(key)
        flat[ALIASES.get(k, k)] = value
    if isinstance(flat.get("dataset"), (str, Path)):
        flat["dataset"] = [flat["dataset"]]
    if isinstance(flat.get("target_modules"), str):
        flat["target_modules"] = [m for m in flat["target_modules"].split(",") if m]
    return flat


def load_spec_file(path: Path) -> dict[str, Any]:
    """Read a JSON or YAML spec file into a flat dict."""
    text = Path(path).read_text()
    try:
        if Path(path).suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # parse errors from either library
        raise ConfigError(f"spec file {path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"spec file {path}: expected a mapping at the top level")
    return normalize_spec(data)


def build_config(spec: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Spec values, then explicit overrides (flags); every problem in one message."""
    merged = normalize_spec(spec or {}) | normalize_spec(overrides or {})
    try:
        return TrainConfig(**merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise ConfigError(f"invalid training config: {problems}") from None


def default_output_dir(cfg: TrainConfig) -> Path:
    """Where checkpoints live when no output dir is given: on the store volume,
    keyed by adapter identity so a restarted Job finds its own checkpoint.
    With the store on a bucket: under the node-local cache (a ``cache.hostPath``
    keeps them for a retried pod, which is pinned to the same node; an emptyDir
    does not), never on the bucket: only the finished adapter is published."""
    if cfg.output_dir is not None:
        return cfg.output_dir
    assert cfg.store_root is not None
    root = local_cache_dir() if is_s3(cfg.store_root) else cfg.store_root
    return root / ".training" / cfg.owner / (cfg.name or "adapter") / (cfg.version or "unversioned")


def local_cache_dir() -> Path:
    """``$LORAPLANE_MODEL_CACHE``, else a directory under the temp dir (as the worker's loader)."""
    import tempfile

    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "loraplane-model-cache")


def hyperparameters(cfg: TrainConfig) -> dict[str, Any]:
    """The fields that decide the trained weights (recorded in the summary and
    fingerprinted so a checkpoint is only resumed by the same run)."""
    keys = (
        "method r alpha dropout target_modules learning_rate weight_decay lr_scheduler warmup_steps "
        "epochs max_steps batch_size grad_accum seq_len gradient_checkpointing max_grad_norm seed eval_split"
    ).split()
    return {k: getattr(cfg, k) for k in keys}
