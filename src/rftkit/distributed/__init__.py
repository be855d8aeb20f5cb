"""Ray behind the run's protocols (`runtime.backend: ray`): rollout workers behind the Engine
protocol (rollout.py), grader workers behind the GraderExecutor protocol (grading.py), data-parallel
learners behind the Policy protocol (learners.py), and
starting or joining Ray with every wait bounded (runtime.py). Ray is imported only when a run
asks for it: the default install has no Ray."""

from rftkit.distributed.grading import RayGraderExecutor
from rftkit.distributed.learners import LearnerGroup
from rftkit.distributed.pipeline import AheadPipeline
from rftkit.distributed.rollout import RayEngine
from rftkit.distributed.runtime import WorkerRequest, connect

__all__ = ["AheadPipeline", "LearnerGroup", "RayEngine", "RayGraderExecutor", "WorkerRequest", "connect"]
