"""Old module path kept for ``loraplane.demo`` (``python -m
loraplane.operator.crdgen``); the generator is ``loraplane.operator.api.crdgen``.
Remove once the demo uses the new path."""

from .api.crdgen import main

if __name__ == "__main__":
    raise SystemExit(main())
