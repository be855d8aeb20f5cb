"""Hugging Face datasets on disk: a `save_to_disk` folder (Dataset or DatasetDict) or a folder of data files.

A folder with `dataset_dict.json` or `state.json` is read by `datasets.load_from_disk`; any other
folder by `datasets.load_dataset(folder)` (parquet, json/jsonl or csv files; split names from the
file names, e.g. train.parquet and test.parquet). Nothing is fetched: the hub is off while loading.
A DatasetDict gives the split named by `PATH:SPLIT` (or `split=`), default `train`, or its only split.

Datasets are memory-mapped Arrow, so the sequence is the dataset itself plus the good rows' numbers;
rows are read as Arrow (format "arrow") both when checked and when drawn, so they are the same values.
"""

from __future__ import annotations

import os
from array import array
from contextlib import contextmanager
from pathlib import Path

from rftkit.data.columns import ColumnMap, arrow_rows, require, schema_tree
from rftkit.data.items import ValidationReport, scan_rows
from rftkit.data.lazy import LazyItems
from rftkit.errors import UserError
from rftkit.types import Item

BATCH_ROWS = 1024
_OFFLINE_ENV = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")


@contextmanager
def offline():
    """`datasets` with the hub off (and its progress bars) for the duration of a load, and only then.

    `datasets` is imported first, outside the switch: huggingface_hub reads HF_HUB_OFFLINE once, when it is
    imported, so setting it before that would leave a later model download in this process offline too."""
    datasets = require("datasets")
    hub = require("huggingface_hub.constants")
    flags = [(m, k) for m in (datasets.config, hub) for k in _OFFLINE_ENV if hasattr(m, k)]  # names vary by version
    saved_env, saved = {k: os.environ.get(k) for k in _OFFLINE_ENV}, [getattr(m, k) for m, k in flags]
    bars = datasets.is_progress_bar_enabled()
    os.environ.update({k: "1" for k in _OFFLINE_ENV})
    for module, key in flags:
        setattr(module, key, True)
    datasets.disable_progress_bars()
    try:
        yield datasets
    finally:
        for (module, key), value in zip(flags, saved):
            setattr(module, key, value)
        if bars:
            datasets.enable_progress_bars()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _load(path: Path):
    with offline() as datasets:
        try:
            if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
                return datasets.load_from_disk(str(path))
            return datasets.load_dataset(str(path))
        except datasets.exceptions.DatasetGenerationError as exc:  # a data file that does not parse
            cause = exc.__cause__ or exc
            raise UserError(f"{path}: cannot read its data files: {type(cause).__name__}: {cause}") from None
        except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
            raise UserError(f"{path}: not a Hugging Face dataset folder (a save_to_disk folder, or parquet, json or "
                            f"csv files): {exc}") from None


def _split(data, path: Path, split: str | None):
    """The split to read, and how messages name it."""
    if not hasattr(data, "keys"):  # one Dataset
        if split and data.split is not None and str(data.split) != split:
            raise UserError(f"{path} holds the {str(data.split)!r} split only (asked for {split!r})")
        return data, str(path)
    names = list(data.keys())
    name = split or ("train" if "train" in names or len(names) != 1 else names[0])
    if name not in names:
        raise UserError(f"{path} has no split {name!r}; its splits: {', '.join(names) or 'none'} "
                        f"(pick one as {path}:SPLIT)")
    return data[name], f"{path}:{name}"


class HFSource:
    def __init__(self, path: Path, split: str | None, columns: dict[str, str] | None):
        if not path.is_dir():
            what = "not found" if not path.exists() else "is a file"
            raise UserError(f"{path} {what}: a Hugging Face dataset is a folder (save_to_disk, or data files)")
        self.path = path
        data, self.label = _split(_load(path), path, split)
        self.data = data.with_format("arrow")
        self.columns = ColumnMap.of(columns, schema_tree(self.data.data.schema), self.label)

    def scan(self, require_reference: bool, keep: str) -> ValidationReport:
        report = ValidationReport(path=self.path, n_lines=0, items=[], problems=[], unit="row", label=self.label)
        check = self.columns.check
        rows = arrow_rows(self.data.iter(batch_size=BATCH_ROWS))
        return scan_rows(report, rows, lambda raw, n, seen: check(raw, n, seen, require_reference), keep)

    def items(self, report: ValidationReport, require_reference: bool) -> HFItems:
        return HFItems(self.label, self.data, report.numbers, self.columns, require_reference)


class HFItems(LazyItems):
    unit = "row"

    def __init__(self, where: str, data, numbers: array, columns: ColumnMap, require_reference: bool):
        super().__init__(where, numbers, require_reference)
        self.data, self.columns = data, columns

    def _read(self, index: int, number: int) -> tuple[Item | None, list[str]]:
        raw = self.data[number - 1].to_pylist()[0]
        return self.columns.check(raw, number, {}, self.require_reference)
