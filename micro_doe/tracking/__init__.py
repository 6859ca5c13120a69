"""MLflow plumbing above the science core: tracking URIs, the client, experiments, and the
model registry (``models register``, ``models:/NAME@ALIAS`` references resolved to a local
bundle). Actors, studies and the CLI use it; :mod:`micro_doe.platform` never does."""
