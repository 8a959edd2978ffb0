"""The ModelStore: one canonical, versioned copy of bases and adapters."""
