"""Old module path kept for ``loraplane.demo``; the plugin is
``loraplane.operator.cli.kubectl_plugin``. Remove once the demo uses the new path."""

from .cli.kubectl_plugin import main

__all__ = ["main"]
