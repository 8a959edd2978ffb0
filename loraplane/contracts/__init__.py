"""Contracts between the operator and the worker: documents both sides
read and write (the desired state in a ConfigMap, the worker's status on its
Pod). Neither side imports the other; both import this package, which
imports nothing of loraplane."""
