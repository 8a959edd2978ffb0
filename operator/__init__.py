"""The loraplane operator: API types, pure reconcile core and kopf handlers."""
