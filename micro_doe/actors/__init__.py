"""Ray actors wrapping platform objects: placement, restarts, generator and evaluator actors.

Import order follows the architecture: actors import only :mod:`micro_doe.platform`.
"""

from __future__ import annotations

from micro_doe.actors.cluster import (
    ClusterCapacityError,
    ClusterConnectionError,
    ClusterInfo,
    check_capacity,
    connect,
    evaluator_options,
    generator_options,
    shutdown,
)
from micro_doe.actors.evaluator import EvaluatorActor, EvaluatorPool, EvaluatorWorker
from micro_doe.actors.generator import GeneratorActor, GeneratorWorker

__all__ = [
    "ClusterCapacityError",
    "ClusterConnectionError",
    "ClusterInfo",
    "EvaluatorActor",
    "EvaluatorPool",
    "EvaluatorWorker",
    "GeneratorActor",
    "GeneratorWorker",
    "check_capacity",
    "connect",
    "evaluator_options",
    "generator_options",
    "shutdown",
]
