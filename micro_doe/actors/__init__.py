"""Ray actors wrapping platform objects (generators, evaluators)."""
