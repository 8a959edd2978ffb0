"""The LoRA/QLoRA trainer that runs inside Kubernetes Jobs."""
