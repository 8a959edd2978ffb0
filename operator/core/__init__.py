"""Pure planning: from typed objects and plain values to desired manifests,
status and events. Never talks to Kubernetes; imports only ``api`` (and the
neutral ``loraplane.contracts``)."""
