"""Graders turn (Item, Completion text) into a Score. See base.py for the contract."""

from rftkit.graders.base import Grader, build_grader, grader_names, load_grader_spec

__all__ = ["Grader", "build_grader", "grader_names", "load_grader_spec"]
