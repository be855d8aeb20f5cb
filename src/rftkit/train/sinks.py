"""Sinks: where a run's metrics, sampled rollouts and events go. metrics.jsonl is always written.

`Sink` is the protocol: `log(step, metrics)` every step, `samples(step, rows)` every
`run.sample_interval` steps (samples.jsonl rows), `event(step, kind, fields)` for what happens
once (a health warning, a checkpoint saved). A job service streams all three from one place.

Optional sinks (TensorBoard, MLflow) import their packages lazily, so rftkit works without them;
`make_sinks` raises a UserError naming the pip command when one is asked for but missing.
Every sink writes the DESIGN.md metric names ("Metrics names"); values that are None, NaN or inf
mean "not measured": metrics.jsonl stores them as null, the other sinks skip them.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from rftkit.errors import UserError


class Sink(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def samples(self, step: int, rows: list[dict]) -> None: ...

    def event(self, step: int, kind: str, fields: dict) -> None: ...

    def close(self) -> None: ...


class MetricsOnly:
    """For sinks that plot numbers: sampled rollouts and events are not theirs to keep."""

    def samples(self, step: int, rows: list[dict]) -> None: ...

    def event(self, step: int, kind: str, fields: dict) -> None: ...


def _clean(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


class JsonlSink:
    """One JSON object per line, flushed every write: metrics {"step": s, "<metric>": value, ...} to
    `path`; sampled rollouts (one row per completion) to `samples_path`; events
    {"step": s, "event": kind, ...} to `events_path` (each optional)."""

    def __init__(self, path: Path, samples_path: Path | None = None, events_path: Path | None = None):
        self.path = Path(path)
        self._f = open(self.path, "a")
        self._paths = {"samples": samples_path, "events": events_path}
        self._files: dict = {}

    def log(self, step: int, metrics: dict) -> None:
        self._f.write(json.dumps({"step": step, **{k: _clean(v) for k, v in metrics.items()}}) + "\n")
        self._f.flush()

    def _write(self, name: str, rows: list[dict]) -> None:
        if self._paths[name] is None or not rows:
            return
        if name not in self._files:
            self._files[name] = open(self._paths[name], "a")
        self._files[name].write("".join(json.dumps(row) + "\n" for row in rows))
        self._files[name].flush()

    def samples(self, step: int, rows: list[dict]) -> None:
        self._write("samples", rows)

    def event(self, step: int, kind: str, fields: dict) -> None:
        self._write("events", [{"step": step, "event": kind, **fields}])

    def close(self) -> None:
        self._f.close()
        for f in self._files.values():
            f.close()


def truncate_after(path: Path, step: int) -> None:
    """Drop rows logged after `step`: a resumed run rewrites them, so no step appears twice."""
    path = Path(path)
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the kill
    path.write_text("".join(row + "\n" for row in kept))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _finite_scalars(metrics: Mapping) -> dict[str, float]:
    """The metrics the optional sinks write: real numbers that are finite (None/NaN/inf: not measured)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (str, bytes)) or value is None:
            continue
        if not isinstance(value, (int, float)):
            try:  # numpy / 0-d torch scalars
                value = float(value)
            except (TypeError, ValueError):
                continue  # None, strings, lists: nothing to plot
        value = float(value)
        if math.isfinite(value):
            out[key] = value
    return out


class TensorBoardSink(MetricsOnly):
    """Scalars in TensorBoard event files under `log_dir`, tag = metric name, global_step = step.

    Resume: a new SummaryWriter in the same directory writes a new event file next to the old
    ones. If a killed run had logged steps past its last checkpoint, readers would see those
    steps twice (old values from the first file, new ones from the second). Pass
    `purge_step=checkpoint_step + 1`: the writer records a purge marker, and TensorBoard readers
    (EventAccumulator, the UI) discard earlier events with step >= purge_step.
    """

    def __init__(self, log_dir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)
        self._closed = False

    def log(self, step: int, metrics: dict) -> None:
        for tag, value in _finite_scalars(metrics).items():
            self._writer.add_scalar(tag, value, global_step=step)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.flush()
            self._writer.close()


# MLflow metric/param keys may only hold alphanumerics and  _ - . space : /  (MLflow 3.x).
_MLFLOW_KEY_OK = re.compile(r"[\w\-. :/]")
_MLFLOW_AT = "_at_"


def mlflow_key(name: str) -> str:
    """The MLflow key for a metric name: `@` -> `_at_` (`val/pass@1` -> `val/pass_at_1`).

    Any other character MLflow rejects becomes `_xHH_` (HH = its code point in hex, at least
    two digits). Both rules are undone by `metric_name_from_mlflow_key`; the mapping is
    reversible for names that do not already contain `_at_` or `_x.._` (no DESIGN.md name does).
    Names MLflow accepts (`critic/rewards/mean`) are returned unchanged.
    """
    out = []
    for ch in name:
        if ch == "@":
            out.append(_MLFLOW_AT)
        elif ch.isascii() and _MLFLOW_KEY_OK.fullmatch(ch):
            out.append(ch)
        else:
            out.append(f"_x{ord(ch):02x}_")
    return "".join(out)


def metric_name_from_mlflow_key(key: str) -> str:
    """Inverse of `mlflow_key`: `val/pass_at_1` -> `val/pass@1`."""
    key = re.sub(r"_x([0-9a-f]{2,6})_", lambda m: chr(int(m.group(1), 16)), key)
    return key.replace(_MLFLOW_AT, "@")


def flatten_params(params: Mapping, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.lr": "1e-06", ...}: dotted keys, values as strings."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, name))
        else:
            flat[name] = "None" if value is None else str(value)
    return flat


def _is_file_store(uri: str) -> bool:
    scheme = uri.split(":", 1)[0].lower() if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", uri) else ""
    return scheme in ("", "file")


class MLflowSink(MetricsOnly):
    """Metrics to an MLflow run via an explicit MlflowClient + run id (no global active run, so
    two trainers in one process, e.g. in tests, do not share a run).

    Keys go through `mlflow_key` (`val/pass@1` is logged as `val/pass_at_1`). `params` (a nested
    config) is flattened to dotted keys and logged once at start; values are strings cut to
    MLflow's length limit. `close()` ends the run with status FINISHED. A resumed training run
    starts a new MLflow run (same run name).

    Local stores: MLflow 3.x refuses a `file:` store unless MLFLOW_ALLOW_FILE_STORE=true; the
    sink sets it (os.environ.setdefault) for file stores. A `sqlite:` store would need the
    sqlalchemy and alembic packages, which mlflow-skinny does not install.
    """

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, params: dict | None = None):
        if _is_file_store(tracking_uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param  # needs the mlflow-skinny (or mlflow) package
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        self._Metric = Metric
        self._metrics_per_batch = MAX_METRICS_PER_BATCH
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            try:
                experiment_id = self.client.create_experiment(experiment)
            except MlflowException:  # created meanwhile by another process
                found = self.client.get_experiment_by_name(experiment)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        self.experiment_id = experiment_id
        self.run_id = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        self._closed = False
        if params:
            items = [
                Param(mlflow_key(k), v[:MAX_PARAM_VAL_LENGTH]) for k, v in flatten_params(params).items()
            ]
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i : i + MAX_PARAMS_TAGS_PER_BATCH])

    def log(self, step: int, metrics: dict) -> None:
        now = int(time.time() * 1000)
        items = [self._Metric(mlflow_key(k), v, now, step) for k, v in _finite_scalars(metrics).items()]
        for i in range(0, len(items), self._metrics_per_batch):
            self.client.log_batch(self.run_id, metrics=items[i : i + self._metrics_per_batch])

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.client.set_terminated(self.run_id, status="FINISHED")


class MultiSink:
    """Fans log/samples/event/close out to every sink, in order (put JsonlSink first: it is written before an
    optional sink can fail). close() closes every sink even if one raises, then re-raises."""

    def __init__(self, sinks: list):
        self.sinks = list(sinks)

    def log(self, step: int, metrics: dict) -> None:
        for sink in self.sinks:
            sink.log(step, metrics)

    def samples(self, step: int, rows: list[dict]) -> None:
        for sink in self.sinks:
            sink.samples(step, rows)

    def event(self, step: int, kind: str, fields: dict) -> None:
        for sink in self.sinks:
            sink.event(step, kind, fields)

    def close(self) -> None:
        error = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as e:  # noqa: BLE001 - close the rest, raise the first
                error = error or e
        if error is not None:
            raise error


def _require(module: str, what: str, pip_name: str) -> None:
    import importlib

    try:
        importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} logging needs the {pip_name} package: pip install {pip_name}") from None


def make_sinks(
    run_dir: Path,
    tensorboard: bool = False,
    mlflow: bool = False,
    mlflow_tracking_uri: str | None = None,
    experiment: str = "rftkit",
    params: dict | None = None,
    resume_step: int = 0,
) -> MultiSink:
    """The sinks of one run: RUN_DIR/metrics.jsonl, samples.jsonl and events.jsonl always; TensorBoard in RUN_DIR/tensorboard;
    MLflow in `mlflow_tracking_uri` (default: a file store in RUN_DIR/mlruns), run name = run
    dir name. `resume_step` > 0 (the checkpoint step) makes TensorBoard readers drop events
    logged after it by the killed run (purge_step = resume_step + 1)."""
    run_dir = Path(run_dir)
    if tensorboard:
        _require("tensorboard", "TensorBoard", "tensorboard")
    if mlflow:
        _require("mlflow", "MLflow", "mlflow-skinny")
    sinks: list = [JsonlSink(run_dir / "metrics.jsonl", run_dir / "samples.jsonl", run_dir / "events.jsonl")]
    try:
        if tensorboard:
            sinks.append(TensorBoardSink(run_dir / "tensorboard", purge_step=resume_step + 1 if resume_step > 0 else None))
        if mlflow:
            uri = mlflow_tracking_uri or (run_dir / "mlruns").resolve().as_uri()
            sinks.append(MLflowSink(uri, experiment, run_dir.name, params))
    except BaseException:
        MultiSink(sinks).close()
        raise
    return MultiSink(sinks)
