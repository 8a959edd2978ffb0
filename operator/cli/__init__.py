"""Entry points: ``loraplane operator run|crds`` and the kubectl plugin."""
