"""The run report: `write_report(run_dir)` writes one self-contained, offline HTML page."""

from rftkit.report.page import load_run, render, write_report

__all__ = ["load_run", "render", "write_report"]
