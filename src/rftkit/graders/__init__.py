"""Graders turn (Item, Completion text) into a Score. See base.py for the contract."""

from rftkit.graders.base import (
    Grader,
    build_grader,
    check_grader_items,
    grader_names,
    grader_problems,
    load_grader_spec,
)

__all__ = ["Grader", "build_grader", "check_grader_items", "grader_names", "grader_problems", "load_grader_spec"]
