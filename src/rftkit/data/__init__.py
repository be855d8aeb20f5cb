"""Item files: load and validate JSONL datasets (DESIGN.md, "Data format")."""

from rftkit.data.items import Problem, ValidationReport, format_report, load_items, validate_file

__all__ = ["Problem", "ValidationReport", "format_report", "load_items", "validate_file"]
