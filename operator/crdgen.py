"""Old path of ``loraplane.operator.api.crdgen`` (``python -m
loraplane.operator.crdgen`` still works; imported, it is the same module object).

Kept only while ``loraplane/devcluster/controlpath.py`` and ``loraplane/demo.py``
(the dev harness, edited elsewhere) still name the flat layout; see
tests/unit/architecture/test_layers.py::LEGACY_ALIASES."""

import importlib
import sys

if __name__ == "__main__":
    raise SystemExit(importlib.import_module("loraplane.operator.api.crdgen").main())
sys.modules[__name__] = importlib.import_module("loraplane.operator.api.crdgen")
