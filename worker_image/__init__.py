"""The inference worker: base model plus hot-swappable PEFT adapters."""
