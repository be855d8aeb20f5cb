"""Fault injection: make any grader hang, raise or return garbage on a fraction of calls.

For testing that a run survives its grader. Add `fault` to any grader spec:

    grader:
      type: answer_match
      fault: {hang: 0.2, raise: 0.1, garbage: 0.05, hang_s: 30, seed: 0}

Each call draws once from a seeded generator: with probability `hang` it sleeps `hang_s`
seconds (past any sane deadline) before grading, with `raise` it raises, with `garbage` it
returns a string instead of a Score; otherwise it grades normally. What it did is counted
in `injected` (the executor reports it per step as `grader/injected_<kind>`), so a test
can check the run's error counts against the faults actually injected.
"""

from __future__ import annotations

import random
import threading
from typing import Any

from rftkit.types import Item, Score

KINDS = ("hang", "raise", "garbage")


class InjectedFault(RuntimeError):
    pass


class FaultInjector:
    def __init__(self, inner: Any, hang: float = 0.0, raise_: float = 0.0, garbage: float = 0.0,
                 hang_s: float = 30.0, seed: int = 0):
        self.inner, self.hang_s = inner, hang_s
        self.name, self.needs_reference = inner.name, inner.needs_reference
        self.rates = {"hang": hang, "raise": raise_, "garbage": garbage}
        self.injected = {kind: 0 for kind in KINDS}
        self._rng, self._lock, self._stop = random.Random(seed), threading.Lock(), threading.Event()
        for attr in ("concurrency", "deadline_s", "check_item"):
            if hasattr(inner, attr):
                setattr(self, attr, getattr(inner, attr))

    @classmethod
    def from_spec(cls, inner: Any, spec: Any, where: str) -> FaultInjector:
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: must be a mapping like {{hang: 0.2, raise: 0.1}}")
        options = dict(spec)
        unknown = set(options) - {*KINDS, "hang_s", "seed"}
        if unknown:
            raise ValueError(f"{where}: unknown option(s) {sorted(unknown)}; valid: {[*KINDS, 'hang_s', 'seed']}")
        rates = [float(options.get(kind, 0.0)) for kind in KINDS]
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError(f"{where}: hang, raise and garbage are probabilities that sum to at most 1 (got {rates})")
        return cls(inner, *rates, hang_s=float(options.get("hang_s", 30.0)), seed=int(options.get("seed", 0)))

    def _draw(self) -> str | None:
        with self._lock:
            u, edge = self._rng.random(), 0.0
            for kind in KINDS:
                edge += self.rates[kind]
                if u < edge:
                    self.injected[kind] += 1
                    return kind
        return None

    def grade(self, item: Item, text: str) -> Score:
        fault = self._draw()
        if fault == "hang":
            self._stop.wait(self.hang_s)  # close() releases sleepers at the end of a run
        elif fault == "raise":
            raise InjectedFault("injected fault")
        elif fault == "garbage":
            return "garbage"  # type: ignore[return-value] - the executor must catch this
        return self.inner.grade(item, text)

    def close(self) -> None:
        self._stop.set()
        if hasattr(self.inner, "close"):
            self.inner.close()
