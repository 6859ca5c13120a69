"""Which of a study's actors can take work: quarantine after a failed call, probes, lost actors.

A call fails with :class:`ray.exceptions.RayActorError` when its actor's process or node died
and Ray's own retry (``max_task_retries``) did not save it: the actor is unavailable (its node
is gone but not yet declared dead), restarting, or dead. None of that is the trial's fault.
:class:`ActorHealth` keeps such an actor out of work until it answers again:

1. :meth:`ActorHealth.fail` puts the actor in quarantine (the caller re-queues its trial);
2. :meth:`ActorHealth.poll` sends it a probe (``__ray_ready__``, every ``probe_every_s``) and
   returns it as *recovered* once a probe succeeds;
3. it is *lost* when it stays in quarantine for ``wait_s``, when Ray gave it up (DEAD), or when
   the GCS shows a working actor away from ALIVE (restarting after a lost node, waiting for
   room) for ``wait_s``. Actors never seen ALIVE or RESTARTING are still starting (waiting for
   room) and are not judged by the GCS; ``UNKNOWN`` never counts against an actor. (RESTARTING
   counts as seen: Ray restarts only an actor that was up, perhaps before the first read.)

An actor the GCS shows away from ALIVE is quarantined at that read, before any call of it
fails (:meth:`ActorHealth.take_newly_away`): its calls in flight would otherwise wait for Ray
to restart it on a node with room, up to ``wait_s``, while other actors could do them now.

The GCS is read with :func:`actor_state` at most every ``check_every_s`` seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ray


def actor_state(actor: Any) -> str:
    """Ray's state of ``actor``: ALIVE, PENDING_CREATION, RESTARTING, DEAD, … ("UNKNOWN" when the
    GCS cannot say). Read from the GCS actor table: Ray's public state API needs the dashboard."""
    try:
        from ray._private.state import state

        return str(state.actor_table(actor._actor_id.hex()).get("State", "UNKNOWN"))
    except Exception:  # noqa: BLE001 — a health check must never fail the study
        return "UNKNOWN"


def is_actor_failure(err: BaseException) -> bool:
    """Whether ``err`` says the actor (its process or node) failed, not the work it was given."""
    return isinstance(err, ray.exceptions.RayActorError)


@dataclass
class ActorHealth:
    """Quarantine, probes and lost actors for keyed actors (module docstring)."""

    wait_s: float
    probe_every_s: float = 2.0
    check_every_s: float = 2.0
    quarantined: dict[Hashable, float] = field(default_factory=dict)  # key → since when
    reasons: dict[Hashable, str] = field(default_factory=dict)  # key → the failure that quarantined it
    _probes: dict[Any, Hashable] = field(default_factory=dict)  # probe in flight → key
    _next_probe: dict[Hashable, float] = field(default_factory=dict)
    _seen_alive: set[Hashable] = field(default_factory=set)
    _away_since: dict[Hashable, float] = field(default_factory=dict)
    _states: dict[Hashable, str] = field(default_factory=dict)  # key → its state at the last GCS read
    _checked: float = -math.inf
    _newly_away: list[tuple[Hashable, str]] = field(default_factory=list)  # quarantined at a GCS read

    def fail(self, key: Hashable, err: BaseException, now: float | None = None) -> None:
        """A call to ``key`` failed with ``err`` (an actor failure): keep it out of work."""
        now = time.monotonic() if now is None else now
        self.quarantined.setdefault(key, now)
        self._next_probe.setdefault(key, now)
        self.reasons[key] = _short(err)

    def probe_refs(self) -> list[Any]:
        """Probes in flight (wait on them with the other calls)."""
        return list(self._probes)

    def poll(
        self, actors: Mapping[Hashable, Any], now: float | None = None
    ) -> tuple[list[Hashable], list[tuple[Hashable, str]]]:
        """Send due probes, read finished ones and the GCS: ``(recovered, [(lost, why), …])``.

        ``actors`` maps every key still in use (quarantined ones included) to its handle;
        each key is reported lost once and then forgotten.
        """
        now = time.monotonic() if now is None else now
        recovered: list[Hashable] = []
        lost: dict[Hashable, str] = {}
        done, _ = ray.wait(list(self._probes), num_returns=len(self._probes), timeout=0) if self._probes else ([], [])
        for ref in done:
            key = self._probes.pop(ref)
            try:
                ray.get(ref)
            except Exception as err:  # noqa: BLE001 — a failed probe keeps the actor in quarantine
                self.reasons[key] = _short(err)
                if isinstance(err, ray.exceptions.ActorDiedError) and actor_state(actors.get(key)) == "DEAD":
                    lost[key] = f"it died for good ({self.reasons[key]})"
                self._next_probe[key] = now + self.probe_every_s
                continue
            if key in self.quarantined:
                recovered.append(key)
                self._release(key)
        for key, since in list(self.quarantined.items()):
            if key in lost or key not in actors:
                continue
            if now - since >= self.wait_s:
                lost[key] = f"no answer within {self.wait_s:g} s ({self.reasons.get(key, 'unavailable')})"
            elif key not in self._probes.values() and now >= self._next_probe.get(key, now):
                self._probes[actors[key].__ray_ready__.remote()] = key
        if now - self._checked >= self.check_every_s:
            self._checked = now
            for key, actor in actors.items():
                if key in lost:
                    continue
                state = actor_state(actor)
                self._states[key] = state
                if state in ("ALIVE", "RESTARTING"):  # RESTARTING: it was up once, maybe before we looked
                    self._seen_alive.add(key)
                if state == "ALIVE":
                    self._away_since.pop(key, None)
                elif state == "DEAD" and (key in self._seen_alive or key in self.quarantined):
                    lost[key] = f"Ray gave it up ({self.reasons.get(key, 'restarts exhausted')})"
                elif key in self._seen_alive and state != "UNKNOWN":
                    since = self._away_since.setdefault(key, now)
                    if now - since >= self.wait_s:
                        lost[key] = f"no node took it within {self.wait_s:g} s (state {state})"
                    elif key not in self.quarantined:  # its node is gone: take its work elsewhere now
                        self.fail(key, RuntimeError(f"Ray shows it {state}: its process or node was lost"), now)
                        self._newly_away.append((key, self.reasons[key]))
        for key in lost:
            self._release(key)
            self._seen_alive.discard(key)
            self._away_since.pop(key, None)
            self._states.pop(key, None)
        return recovered, list(lost.items())

    def take_newly_away(self) -> list[tuple[Hashable, str]]:
        """Actors quarantined since the last call because the GCS showed them away from ALIVE,
        with why: their calls in flight are not coming back soon (re-queue them elsewhere)."""
        taken, self._newly_away = [k for k in self._newly_away if k[0] in self.quarantined], []
        return taken

    def waiting(self) -> dict[Hashable, str]:
        """Actors that cannot be working now: in quarantine, or away from ALIVE at the last GCS
        read (PENDING_CREATION: waiting for room; RESTARTING: after a lost node), with why.
        Empty when every actor is ALIVE: a quiet study is then busy, not stuck."""
        away = {key: state for key, state in self._states.items() if state not in ("ALIVE", "UNKNOWN")}
        return away | {key: "quarantined" for key in self.quarantined}

    def _release(self, key: Hashable) -> None:
        self.quarantined.pop(key, None)
        self.reasons.pop(key, None)
        self._next_probe.pop(key, None)
        for ref in [r for r, k in self._probes.items() if k == key]:
            del self._probes[ref]


def _short(err: BaseException) -> str:
    """The first line of an actor error, at most 200 characters."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"{type(err).__name__}: {text}"[:200]
