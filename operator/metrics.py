"""Old path of ``loraplane.operator.controllers.metrics`` (an alias: the same module object).

Kept only while ``loraplane/devcluster/controlpath.py`` and ``loraplane/demo.py``
(the dev harness, edited elsewhere) still name the flat layout; see
tests/unit/architecture/test_layers.py::LEGACY_ALIASES."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("loraplane.operator.controllers.metrics")
