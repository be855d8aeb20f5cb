"""Running fine-tuning jobs: a job becomes an `rft train` run in its own directory.

`job_overrides` maps an OpenAI job (model, files, `method`, hyperparameters, and the rftkit
extension `rftkit.overrides`) onto rftkit config overrides. `Runner` threads claim queued jobs
from the database, validate their files (a bad line fails the job with its line number, as
OpenAI's `invalid_training_file` error), run `rft train` as a subprocess (so a cancel can stop
it and the server stays responsive), turn each new line of the run's metrics.jsonl into a
`fine_tuning.job.event`, beat a heartbeat, and set the final status. A job whose worker died
(the server was SIGKILLed) is claimed again when its heartbeat is stale and continues with
`rft train --resume` from its last checkpoint.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from rftkit.data.items import validate_file
from rftkit.data.rows import ROW_KINDS as _ROWS
from rftkit.server.db import TERMINAL, Database, Event, File, Job
from rftkit.server.registry import register, tuned_name

HEARTBEAT_S = 2.0
STALE_S = 15.0  # a running job whose worker has not beaten for this long is taken over
ROW_KINDS = {"supervised": _ROWS["conversation"], "dpo": _ROWS["preference"]}  # what a job's files hold (Items otherwise)
EFFORT_TOKENS = {"low": 32, "medium": 48, "high": 96}  # reasoning_effort -> rollout.max_new_tokens
BASE_LR = {"reinforcement": 2e-4, "supervised": 5e-4, "dpo": 5e-5}  # learning_rate_multiplier multiplies these


def job_overrides(job: Job, train_path: str, val_path: str | None, n_items: int) -> list[str]:
    """The rftkit config of an OpenAI-shaped job, as `key=value` overrides."""
    kind = job.method.get("type", "supervised")
    spec = job.method.get(kind) or {}
    hyper = {**(job.hyperparameters or {}), **(spec.get("hyperparameters") or {})}
    batch = hyper.get("batch_size")
    batch = int(batch) if isinstance(batch, (int, float)) else (16 if kind == "reinforcement" else 32)
    epochs = hyper.get("n_epochs")
    epochs = float(epochs) if isinstance(epochs, (int, float)) else 1.0
    lr_mult = hyper.get("learning_rate_multiplier")
    lr = BASE_LR.get(kind, 1e-4) * (float(lr_mult) if isinstance(lr_mult, (int, float)) else 1.0)
    steps = max(1, math.ceil(n_items * epochs / batch))
    out = [f"model.path={job.model}", f"data.train={train_path}", f"train.prompts_per_step={batch}",
           f"train.steps={steps}", f"train.lr={lr}", f"train.seed={job.seed}", f"run.dir={job.run_dir}",
           "run.checkpoint_interval=" + str(max(1, min(25, steps // 4 or 1)))]
    if val_path:
        out.append(f"data.val={val_path}")
        interval = hyper.get("eval_interval")
        out.append(f"run.eval_interval={int(interval) if isinstance(interval, int) else max(1, steps // 4)}")
        samples = hyper.get("eval_samples")
        if isinstance(samples, int):
            out.append(f"run.eval_samples={samples}")
    if kind == "reinforcement":
        out += ["algorithm.name=grpo", "grader=" + json.dumps(spec.get("grader") or {"type": "answer_match"})]
        compute = hyper.get("compute_multiplier")  # OpenAI: exploration compute; here the group size (8 at 1.0)
        group = max(2, min(64, round(8 * float(compute)))) if isinstance(compute, (int, float)) and compute > 0 else 8
        out += [f"rollout.num_generations={group}", f"train.micro_batch_size={max(1, min(64, batch * group))}"]
        effort = hyper.get("reasoning_effort")  # the room a completion has to think: rollout.max_new_tokens
        if effort in EFFORT_TOKENS:
            out.append(f"rollout.max_new_tokens={EFFORT_TOKENS[effort]}")
    elif kind == "supervised":
        out += ["algorithm.name=sft", f"train.micro_batch_size={min(8, batch)}"]
    elif kind == "dpo":
        out += ["algorithm.name=dpo", f"train.micro_batch_size={min(8, batch)}"]
    return out + list(job.config.get("overrides", []))


WHOLE = ("grader", "environment", "init_from")  # config keys whose value is one object, not a section of keys


def config_overrides(config: dict) -> list[str]:
    """An rftkit config mapping (the `rftkit.config` extension) as `key=value` overrides: a section's keys one by one
    (`train.steps=50`), a grader or environment object whole."""
    out = []
    for key, value in config.items():
        if isinstance(value, dict) and key not in WHOLE:
            out += [f"{key}.{inner}={json.dumps(v)}" for inner, v in value.items()]
        else:
            out.append(f"{key}={json.dumps(value)}")
    return out


class Runner:
    """`workers` threads, each running one job at a time."""

    def __init__(self, db: Database, root: Path, workers: int = 1) -> None:
        self.db, self.root, self.workers = db, root, workers
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, name=f"job-worker-{i}", daemon=True) for i in range(workers)]
        self.procs: dict[str, subprocess.Popen] = {}
        self.pausing: set[str] = set()  # jobs whose run was sent SIGINT to pause

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def shutdown(self) -> None:
        self.stop.set()
        for proc in list(self.procs.values()):
            proc.send_signal(signal.SIGINT)  # the run checkpoints and exits 130; its job stays `running` to resume
        for t in self.threads:
            t.join(timeout=30)

    def _loop(self) -> None:
        while not self.stop.is_set():
            self._validate_pending()
            job = self.db.claim(self.name, STALE_S)
            if job is None:
                self.stop.wait(0.5)
                continue
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - one job's failure is that job's, never the server's
                self._finish(job.id, "failed", {"code": "server_error", "message": f"{type(exc).__name__}: {exc}",
                                                "param": None})

    def _validate_pending(self) -> None:
        """validating_files -> queued, or failed with the bad lines (OpenAI's invalid_training_file)."""
        with self.db.session() as s:
            pending = s.query(Job).filter(Job.status == "validating_files").order_by(Job.seq).all()
            for job in pending:
                problems = []
                for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
                    if not file_id:
                        continue
                    f = s.get(File, file_id)  # Items for RFT, chat rows for SFT, preference pairs for DPO
                    kind = job.method.get("type")
                    report = validate_file(f.path, require_reference=_needs_reference(job),
                                           check_row=ROW_KINDS[kind] if kind in ROW_KINDS else None)
                    if report.problems:
                        shown = "; ".join(f"line {p.line}: {p.reason}" for p in report.problems[:5])
                        more = f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""
                        problems.append((param, f"{f.filename}: {shown}{more}", [p.line for p in report.problems]))
                    elif not report.items:
                        problems.append((param, f"{f.filename}: no items (the file is empty)", []))
                if problems:
                    param, message, lines = problems[0]
                    job.status, job.finished_at = "failed", int(time.time())
                    job.error = {"code": f"invalid_{param}", "message": message, "param": param, "lines": lines}
                    self.db.event(s, job.id, f"Validation of {param} failed: {message}", "error")
                else:
                    job.status = "queued"
                    self.db.event(s, job.id, "Validated the files; the job is queued")
            s.commit()

    def _run(self, job: Job) -> None:
        with self.db.session() as s:
            train = s.get(File, job.training_file)
            val = s.get(File, job.validation_file) if job.validation_file else None
            n_items = sum(1 for line in Path(train.path).read_text(errors="replace").splitlines() if line.strip())
        run_dir = Path(job.run_dir)
        resume = (run_dir / "config.yaml").exists()
        if resume:
            cmd = [sys.executable, "-m", "rftkit", "train", "--resume", str(run_dir), "--quiet"]
        else:
            cmd = [sys.executable, "-m", "rftkit", "train", *job_overrides(job, train.path, val.path if val else None, n_items),
                   "--quiet"]
        log = open(run_dir.parent / f"{job.id}.log", "a")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True,
                                preexec_fn=_die_with_parent)
        self.procs[job.id] = proc
        seen = self._last_step(job.id)  # metrics.jsonl's rows up to here are events already (a resume rewrites the rest)
        try:
            while proc.poll() is None:
                if self.stop.wait(HEARTBEAT_S):
                    break
                seen = self._beat(job, run_dir, seen, proc)
            proc.wait(timeout=120) if self.stop.is_set() else None
        finally:
            self.procs.pop(job.id, None)
            self.pausing.discard(job.id)
            log.close()
        self._beat(job, run_dir, seen, proc)
        if self.stop.is_set():
            return  # the server is stopping: the job stays `running` and is resumed by the next server
        with self.db.session() as s:
            status = s.get(Job, job.id).status
        if status == "cancelled":
            return
        if status in ("paused", "queued") and proc.returncode != 0:
            return  # paused: the run checkpointed on SIGINT and stopped; resumed (queued) since: claimed again
        if proc.returncode == 0:  # (a pause that came after the last step changes nothing: the job is done)
            model = tuned_name(job)
            register(self.db, job, model, val.path if val else None, self.root)
            self._finish(job.id, "succeeded", None, model)
        else:
            tail = (run_dir.parent / f"{job.id}.log").read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            self._finish(job.id, "failed", {"code": "training_failed", "message": tail[0][:500], "param": None})

    def _beat(self, job: Job, run_dir: Path, seen: int, proc: subprocess.Popen) -> int:
        """Heartbeat, new metrics as events, and a cancel seen in the database stops the run."""
        lines = (run_dir / "metrics.jsonl").read_text().splitlines() if (run_dir / "metrics.jsonl").exists() else []
        with self.db.session() as s:
            row = s.get(Job, job.id)
            row.heartbeat = time.time()
            for line in lines:
                try:
                    m = json.loads(line)
                except ValueError:
                    break  # a line being written
                if not isinstance(m.get("step"), int) or m["step"] <= seen:
                    continue  # an event already (steps before a resume's checkpoint included)
                reward = m.get("critic/rewards/mean", m.get("train/loss"))
                self.db.event(s, job.id, f"Step {m.get('step')}" + (f": {reward:.4f}" if isinstance(reward, float) else ""),
                              data={"step": m.get("step"), **{k: v for k, v in m.items() if isinstance(v, (int, float))}})
                seen = m["step"]
            status = row.status
            s.commit()
        if status == "cancelled" and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        elif status == "paused" and proc.poll() is None and job.id not in self.pausing:
            proc.send_signal(signal.SIGINT)  # `rft train` checkpoints and exits; resume continues from there
            self.pausing.add(job.id)
        return seen

    def _last_step(self, job_id: str) -> int:
        """The newest step that has a metrics event (-1 if none: step 0 is the baseline evaluation's row)."""
        with self.db.session() as s:
            rows = s.query(Event.data).filter(Event.job_id == job_id, Event.type == "metrics").all()
        return max([d["step"] for (d,) in rows if isinstance(d, dict) and isinstance(d.get("step"), int)], default=-1)

    def _finish(self, job_id: str, status: str, error: dict | None, model: str | None = None) -> None:
        with self.db.session() as s:
            row = s.get(Job, job_id)
            if row.status in TERMINAL:
                return
            row.status, row.error, row.finished_at, row.fine_tuned_model = status, error, int(time.time()), model
            self.db.event(s, job_id, {"succeeded": "The job has successfully completed", "failed": "The job failed",
                                      "cancelled": "The job was cancelled"}[status] + (f": {error['message']}" if error else ""),
                          "error" if status == "failed" else "info")
            s.commit()


def _die_with_parent() -> None:
    """In the child before exec: a SIGKILLed server takes its training runs with it (Linux), so the next server
    resumes each job from its checkpoint instead of racing an orphan for its run directory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _needs_reference(job: Job) -> bool:
    grader = ((job.method.get("reinforcement") or {}).get("grader")) or {}
    return "reference_answer" in json.dumps(grader)
