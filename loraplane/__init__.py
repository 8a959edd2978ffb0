"""loraplane: one base LLM, many small LoRA adapters, on a Kubernetes GPU fleet.

Subpackages map from the repository's top-level folders:
``loraplane.operator`` (operator/), ``loraplane.modelstore`` (modelstore/),
``loraplane.worker`` (worker_image/), ``loraplane.training``
(training_jobs/), ``loraplane.perf`` (perf/); ``loraplane.devcluster`` is
the local control plane used by tests and by ``loraplane dev-cluster``.
The dev harness (devcluster, demo, traffic, tiny_model, perf) ships in the
wheel; what it needs beyond the product comes with the ``harness`` extra.
"""

__version__ = "0.1.0"
