"""Check that the operator's control path imports without the ML stack.

The operator image installs only kopf, the Kubernetes client, pydantic,
prometheus-client and PyYAML. ``python -m loraplane.devcluster.controlpath``
imports every module ``loraplane operator run`` and ``kubectl loraplane`` load,
with torch, transformers, peft (and the rest of the worker's stack) made
unimportable, and exits non-zero if any of them is needed. The operator
Dockerfile runs it at build time; a unit test runs it on the host venv.
"""

from __future__ import annotations

import importlib
import sys

# what `loraplane operator run` imports (operator/cli/run.py) and the kubectl plugin
MODULES = (
    "loraplane.cli",
    "loraplane.operator.cli",
    "loraplane.operator.cli.run",
    "loraplane.operator.controllers.handlers",
    "loraplane.operator.controllers.training_handlers",
    "loraplane.operator.controllers.metrics",
    "loraplane.operator.controllers.kube",
    "loraplane.operator.controllers.ledger_cache",
    "loraplane.operator.controllers.reconcile",
    "loraplane.operator.api.crdgen",
    "loraplane.operator.cli.kubectl_plugin",
)
# top-level packages the operator image does not have
BLOCKED = ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors",
           "tokenizers", "huggingface_hub", "numpy")


def main() -> int:
    for name in BLOCKED:
        sys.modules[name] = None  # type: ignore[assignment]  # import raises ImportError
    for module in MODULES:
        importlib.import_module(module)
    print(f"control path imports without {', '.join(BLOCKED)}: {len(MODULES)} modules")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
