"""Hypothesis profiles for the fuzz suites: `ci` (bounded, the default in scripts/test.sh) and `long`
(on demand: `HYPOTHESIS_PROFILE=long python -m pytest tests/fuzz`, or `python bench/fuzz.py`).

Every example also runs under a wall-clock alarm (`bounded`): a parser that hangs fails the
example with TimeoutError instead of stalling the suite.
"""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=int(os.environ.get("RFTKIT_FUZZ_EXAMPLES", "5000")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

EXAMPLE_TIMEOUT_S = 10


@contextmanager
def bounded(seconds: int = EXAMPLE_TIMEOUT_S):
    """Fail an example that takes longer than `seconds` (SIGALRM; Python code only, which these parsers are)."""
    def expire(signum, frame):
        raise TimeoutError(f"an example took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
