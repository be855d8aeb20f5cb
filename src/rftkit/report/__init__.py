"""The run report: `write_report(run_dir)` writes one self-contained, offline HTML page."""

from rftkit.report.page import Evaluation, find_evaluation, load_evaluation, load_run, render, write_report

__all__ = ["Evaluation", "find_evaluation", "load_evaluation", "load_run", "render", "write_report"]
