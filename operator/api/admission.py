"""Who refuses what: the API server (schema + CEL) or the operator.

Rule of the project: bad input is refused by the API server with a message
naming the field, so nothing is created from it. Every check the operator's
pydantic types make is therefore either

- a Field constraint (``ge``, ``max_length``, ``pattern``, a ``Literal``...),
  which pydantic's JSON Schema carries into the generated CRD on its own; or
- a validator whose CEL twin is written next to it (``CEL_TWINS`` names the
  messages of the twin rules; ``tests/unit/api/test_twins.py`` finds them on
  the same field of the generated CRD); or
- a check CEL cannot make, listed in ``OPERATOR_ONLY`` with the reason the
  operator reports instead (a condition or a Warning Event, never a crash).

``CROSS_OBJECT`` lists what no admission rule can see because it depends on
other objects or on the store; the operator reports each as a condition.
The cluster test ``tests/cluster/admission`` throws generated hostile objects
at a real API server and checks each outcome is one of these.
"""

from __future__ import annotations

from .adapter_types import ONE_OF
from .basemodel_types import EXCLUSIVE
from .common_types import (
    CACHE_SIZE_WITH_HOSTPATH, RELATIVE_PATH_RULE, RESERVED_MOUNT_MESSAGE, S3_DOT_SEGMENTS, STORE_ONE_OF,
    TOLERATION_RULES,
)
from .names import name_message
from .training_types import DATASET_PATHS_RULE

#: "Model.validator" -> messages of the CEL rules that refuse the same input.
CEL_TWINS: dict[str, list[str]] = {
    "RolloutSpec._steps": ["rollout steps must be within 1..100", "rollout steps must be strictly increasing",
                           "rollout steps must end at 100"],
    "TrainingDataset._relative": [DATASET_PATHS_RULE["message"]],
    "Toleration._as_a_pod_would": [r["message"] for r in TOLERATION_RULES],
    "HostPathVolume._no_backsteps": ["hostPath.path must not contain '..' segments"],
    "StoreVolume._not_reserved": [RESERVED_MOUNT_MESSAGE],
    # CEL's cross-field rules, twinned so an object stored without them is a condition, not a traceback
    "StoreVolume._one_volume": [STORE_ONE_OF],
    "ModelCache._size_only_for_empty_dir": [CACHE_SIZE_WITH_HOSTPATH],
    "S3Store._no_dot_segments": [S3_DOT_SEGMENTS],
    "AdapterSpec._one_origin": [ONE_OF],
    "AdapterSource._relative": [RELATIVE_PATH_RULE["message"]],
    "BaseModelSource._relative": [RELATIVE_PATH_RULE["message"]],
    "BaseModelSource._exclusive": [EXCLUSIVE],
    # metadata.name: CEL at the schema root (the only place CEL sees metadata)
    "WorkerPoolMeta._name": [name_message("WorkerPool")],
    "BaseModelMeta._name": [name_message("BaseModel")],
    "AdapterMeta._name": [name_message("Adapter")],
}


#: "Model.validator" -> (reason the operator reports, why CEL cannot check it).
OPERATOR_ONLY: dict[str, tuple[str, str]] = {
    "RolloutCommand._cmd": (
        "InvalidRolloutCommand",
        "a command is a rollout-command.loraplane.io/<id> annotation; CEL sees no annotations, so a bad "
        "command is a Warning Event on the pool and the command is ignored"),
}

#: What depends on other objects or the store: reason -> what is wrong.
CROSS_OBJECT: dict[str, str] = {
    "BaseModelMissing": "spec.baseModelRef names no BaseModel in the namespace",
    "BaseModelInvalid": "the referenced BaseModel does not parse",
    "NoVariant": "none of the pool's spec.variants is offered by its BaseModel",
    "AdaptersUnavailable": "a route names an Adapter that is missing, not Ready or for another base",
    "SecretMissing": "the hub token Secret or key does not exist",
    "StoreReadOnly": "a publish needs a writable store volume",
    "NotAnAdapter": "the store path holds something other than an adapter",
    "BaseChecksumMismatch": "the adapter was trained on another base checkpoint",
    "InvalidSpec": "an object stored before the current CRD rules that the types refuse",
}
