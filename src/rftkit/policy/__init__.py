"""The learner: the `Policy` protocol (policy/base.py) and its in-process implementation (policy/local.py)."""

from rftkit.policy.base import LossSpec, Policy, Row
from rftkit.policy.local import LocalPolicy

__all__ = ["LocalPolicy", "LossSpec", "Policy", "Row"]
