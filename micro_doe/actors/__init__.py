"""Ray actors wrapping platform objects: placement, restarts, generator and evaluator actors.

Import order follows the architecture: actors import only :mod:`micro_doe.platform`.
"""

from __future__ import annotations

from micro_doe.actors.cluster import (
    CapacityLostError,
    ClusterCapacityError,
    ClusterConnectionError,
    ClusterInfo,
    check_capacity,
    check_workers,
    connect,
    evaluator_options,
    generator_options,
    shutdown,
)
from micro_doe.actors.evaluator import EvaluatorActor, EvaluatorPool, EvaluatorWorker
from micro_doe.actors.generator import GeneratorActor, GeneratorWorker
from micro_doe.actors.health import ActorHealth, actor_state, is_actor_failure

__all__ = [
    "CapacityLostError",
    "ClusterCapacityError",
    "ClusterConnectionError",
    "ClusterInfo",
    "EvaluatorActor",
    "EvaluatorPool",
    "EvaluatorWorker",
    "GeneratorActor",
    "GeneratorWorker",
    "check_capacity",
    "check_workers",
    "connect",
    "evaluator_options",
    "generator_options",
    "ActorHealth",
    "actor_state",
    "is_actor_failure",
    "shutdown",
]
