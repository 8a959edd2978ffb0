"""The API: pydantic types of the three custom resources (the single source
of truth for the generated CRDs), their CEL rules and defaults, conditions,
and the label/annotation names on the wire. Imports nothing above it."""
