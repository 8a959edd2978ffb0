"""The e2e story (tests/e2e/test_real_install.py) against a kind cluster.

The same test functions, not a copy: they are loaded from the e2e module and
run here with the ``e2e`` fixture of tests/kind/conftest.py (``KindEnv``:
images from ``docker build`` + ``kind load``, Services through port-forward).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_path = Path(__file__).resolve().parents[1] / "e2e" / "test_real_install.py"
_spec = importlib.util.spec_from_file_location("loraplane_e2e_story", _path)
_story = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_story)

globals().update({name: obj for name, obj in vars(_story).items() if name.startswith("test_") or name == "story"})
