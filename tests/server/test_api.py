"""`rft server` against the official `openai` client: a real server process on localhost, real SQLite."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import EXAMPLES

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rftkit", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("server")
    keys = {p: rft("server", "keys", "create", "--project", p, "--root", str(root)).stdout.strip() for p in ("alpha", "beta")}
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rftkit", "server", "start", "--root", str(root), "--port", str(port),
                             "--max-upload-mb", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(f"rft server start exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
            time.sleep(0.2)
    yield {"url": url, "keys": keys, "root": root}
    proc.terminate()
    proc.wait(timeout=60)


def client(server, project: str = "alpha"):
    return openai.OpenAI(base_url=server["url"], api_key=server["keys"][project], max_retries=0, timeout=30)


def wait_for(c, job_id: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = c.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status}")


GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
          "reference": "{{item.reference_answer}}", "operation": "eq"}


def test_a_reinforcement_job_runs_to_succeeded_with_events(server, tmp_path):
    c = client(server)
    lines = (EXAMPLES / "train.jsonl").read_text().splitlines()[:32]
    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(lines) + "\n")
    train_file = c.files.create(file=train.open("rb"), purpose="fine-tune")
    val_file = c.files.create(file=(EXAMPLES / "val.jsonl").open("rb"), purpose="fine-tune")
    assert train_file.filename == "train.jsonl" and train_file.bytes == train.stat().st_size
    assert c.files.content(train_file.id).read() == train.read_bytes()
    job = c.fine_tuning.jobs.create(
        model="bundled:tiny-arith", training_file=train_file.id, validation_file=val_file.id, suffix="demo",
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
        extra_body={"rftkit": {"overrides": ["train.steps=3", "rollout.num_generations=4", "train.micro_batch_size=16",
                                             "run.eval_interval=3"]}})
    assert job.status == "validating_files" and job.object == "fine_tuning.job"
    done = wait_for(c, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny-arith:alpha:demo:{job.id}"
    events = c.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert any(m.startswith("Step 3") for m in messages) and "The job has successfully completed" in messages
    metrics = [e for e in events if e.type == "metrics"]
    assert {e.data["step"] for e in metrics} == {1, 2, 3}
    assert [j.id for j in c.fine_tuning.jobs.list(limit=10).data][0] == job.id
    assert any(m.startswith("Validation pass@1: base") for m in messages)  # the registry's eval compare

    # the registry: lineage, final and best metrics, the evaluation against the base, the report
    tuned = done.fine_tuned_model
    listed = {m.id: m for m in c.models.list().data}
    assert "bundled:tiny-arith" in listed and tuned in listed
    entry = c.models.retrieve(tuned).to_dict()["rftkit"]
    assert entry["job_id"] == job.id and entry["base"] == "bundled:tiny-arith" and entry["report"] is True
    assert [step["algorithm"] for step in entry["lineage"]] == ["grpo"]
    assert entry["final_metrics"]["step"] == 3 and "critic/rewards/mean" in entry["best_metrics"]
    pass1 = entry["evaluation"]["metrics"]["pass@1"]
    assert entry["evaluation"]["n_items"] == 100 and 0 <= pass1["base"] <= 1 and 0 <= pass1["tuned"] <= 1
    shown = rft("models", "list", "--root", str(server["root"]))
    assert shown.returncode == 0 and tuned in shown.stdout, shown.stderr
    assert json.loads(rft("models", "show", tuned, "--root", str(server["root"])).stdout)["rftkit"]["job_id"] == job.id

    # the tuned model answers chat completions, streamed too; another project cannot see it
    question = [{"role": "user", "content": "What is 12 + 30?"}]
    reply = c.chat.completions.create(model=tuned, messages=question, max_tokens=24, temperature=0)
    assert reply.model == tuned and reply.choices[0].message.content
    chunks = list(c.chat.completions.create(model=tuned, messages=question, max_tokens=24, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == reply.choices[0].message.content
    beta = client(server, "beta")
    with pytest.raises(openai.NotFoundError):
        beta.models.retrieve(tuned)
    with pytest.raises(openai.NotFoundError):
        beta.chat.completions.create(model=tuned, messages=question)
    assert tuned not in [m.id for m in beta.models.list().data]


def test_bad_lines_fail_the_job_at_validation_with_their_numbers(server, tmp_path):
    c = client(server)
    bad = tmp_path / "bad.jsonl"
    good = (EXAMPLES / "train.jsonl").read_text().splitlines()[:3]
    bad.write_text("\n".join([good[0], '{"messages": "not a list"}', good[1], "{oops", good[2]]) + "\n")
    f = c.files.create(file=bad.open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="bundled:tiny-arith", training_file=f.id,
                                    method={"type": "reinforcement", "reinforcement": {"grader": GRADER}})
    done = wait_for(c, job.id, 60)
    assert done.status == "failed"
    assert done.error.code == "invalid_training_file" and "line 2" in done.error.message and "line 4" in done.error.message


def test_keys_projects_and_uploads_are_checked(server, tmp_path):
    import requests

    url = server["url"]
    assert requests.get(f"{url}/files", timeout=30).status_code == 401
    wrong = requests.get(f"{url}/files", headers={"Authorization": "Bearer sk-rft-wrong"}, timeout=30)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    alpha, beta = client(server, "alpha"), client(server, "beta")
    mine = alpha.files.create(file=(EXAMPLES / "val.jsonl").open("rb"), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        beta.files.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        beta.files.content(mine.id)
    assert mine.id not in [f.id for f in beta.files.list().data]
    job = alpha.fine_tuning.jobs.create(model="bundled:tiny-arith", training_file=mine.id,
                                        method={"type": "reinforcement", "reinforcement": {"grader": GRADER}})
    with pytest.raises(openai.NotFoundError):
        beta.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        beta.fine_tuning.jobs.list_events(job.id)
    alpha.fine_tuning.jobs.cancel(job.id)
    headers = {"Authorization": f"Bearer {server['keys']['alpha']}"}
    for name, body, status, code in [("../../etc/passwd", b'{"a": 1}\n', 400, "invalid_file_name"),
                                     ("big.jsonl", b'{"a": 1}\n' * 200_000, 413, "file_too_large"),
                                     ("notes.jsonl", b"just some text\n", 400, "invalid_file_format")]:
        r = requests.post(f"{url}/files", headers=headers, files={"file": (name, body)}, data={"purpose": "fine-tune"},
                          timeout=30)
        assert r.status_code == status and r.json()["error"]["code"] == code, (name, r.status_code, r.text[:200])
    r = requests.post(f"{url}/fine_tuning/jobs", headers=headers, json={"model": "bundled:tiny-arith",
                                                                    "training_file": "file-nope"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "file_not_found"
    r = requests.post(f"{url}/fine_tuning/jobs", headers=headers, json={
        "model": "bundled:tiny-arith", "training_file": mine.id,
        "method": {"type": "reinforcement", "reinforcement": {"grader": {"type": "no_such_grader"}}}}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_grader"


def test_fifty_concurrent_submissions_give_fifty_jobs_that_all_end(server):
    from concurrent.futures import ThreadPoolExecutor

    c = client(server)
    f = c.files.create(file=(EXAMPLES / "val.jsonl").open("rb"), purpose="fine-tune")

    def submit(i):
        return client(server).fine_tuning.jobs.create(
            model="bundled:tiny-arith", training_file=f.id, suffix=f"n{i}",
            method={"type": "reinforcement", "reinforcement": {"grader": GRADER}}).id

    with ThreadPoolExecutor(50) as pool:
        ids = list(pool.map(submit, range(50)))
    assert len(set(ids)) == 50
    with ThreadPoolExecutor(50) as pool:  # end them: cancel what has not ended by itself
        list(pool.map(lambda j: c.fine_tuning.jobs.cancel(j) if c.fine_tuning.jobs.retrieve(j).status not in
                      ("succeeded", "failed", "cancelled") else None, ids))
    listed, after = [], None
    while True:  # paginated, newest first
        page = c.fine_tuning.jobs.list(limit=20, **({"after": after} if after else {}))
        listed += [j for j in page.data if j.id in set(ids)]
        if not page.has_more:
            break
        after = page.data[-1].id
    assert sorted(j.id for j in listed) == sorted(ids)
    assert all(j.status in ("succeeded", "failed", "cancelled") for j in listed)


def test_graders_run_and_validate_take_openai_shaped_requests(server):
    c = client(server)
    ok = c.fine_tuning.alpha.graders.run(grader=GRADER, model_sample="42", item={"reference_answer": "42"})
    assert ok.reward == 1.0
    assert c.fine_tuning.alpha.graders.run(grader=GRADER, model_sample="41", item={"reference_answer": "42"}).reward == 0.0
    assert c.fine_tuning.alpha.graders.validate(grader=GRADER).grader.type == "string_check"
    with pytest.raises(openai.BadRequestError) as bad:
        c.fine_tuning.alpha.graders.validate(grader={"type": "string_check", "name": "x", "operation": "nope"})
    assert bad.value.status_code == 400


def test_a_job_lists_its_checkpoints_with_their_metrics(server, tmp_path):
    c = client(server)
    f = c.files.create(file=(EXAMPLES / "val.jsonl").open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model="bundled:tiny-arith", training_file=f.id, suffix="ck",
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
        extra_body={"rftkit": {"overrides": ["train.steps=4", "rollout.num_generations=4", "train.micro_batch_size=16",
                                             "run.checkpoint_interval=2"]}})
    assert wait_for(c, job.id).status == "succeeded"
    checkpoints = c.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [k.step_number for k in checkpoints] == [4, 2]
    assert checkpoints[0].fine_tuned_model_checkpoint == f"ft:tiny-arith:alpha:ck:{job.id}:ckpt-step-4"
    metrics = checkpoints[0].metrics.to_dict()
    assert metrics["step"] == 4 and 0 <= metrics["train_mean_reward"] <= 1 and "critic/rewards/mean" in metrics
    with pytest.raises(openai.NotFoundError):
        client(server, "beta").fine_tuning.jobs.checkpoints.list(job.id)
    earlier = c.chat.completions.create(model=checkpoints[1].fine_tuned_model_checkpoint, max_tokens=16,
                                        messages=[{"role": "user", "content": "What is 2 + 2?"}])
    assert earlier.choices[0].message.content
    with pytest.raises(openai.NotFoundError):
        client(server, "beta").chat.completions.create(model=checkpoints[1].fine_tuned_model_checkpoint, max_tokens=4,
                                                       messages=[{"role": "user", "content": "What is 2 + 2?"}])


def test_pause_checkpoints_the_run_and_resume_continues_it(server):
    c = client(server)
    f = c.files.create(file=(EXAMPLES / "val.jsonl").open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(
        model="bundled:tiny-arith", training_file=f.id, suffix="pause",
        method={"type": "reinforcement", "reinforcement": {"grader": GRADER, "hyperparameters": {"batch_size": 4}}},
        extra_body={"rftkit": {"overrides": ["train.steps=60", "rollout.num_generations=4", "train.micro_batch_size=16",
                                             "run.checkpoint_interval=100"]}})
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not [e for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data
                                               if e.type == "metrics"]:
        time.sleep(0.3)
    assert c.fine_tuning.jobs.pause(job.id).status == "paused"
    with pytest.raises(openai.BadRequestError):
        c.fine_tuning.jobs.pause(job.id)
    run = Path(server["root"]) / "runs" / job.id
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list((run / "checkpoints").glob("step-*/manifest.json")):
        time.sleep(0.3)  # SIGINT: the run writes a checkpoint of the step it stopped at
    stopped_at = max(int(p.parent.name.removeprefix("step-")) for p in (run / "checkpoints").glob("step-*/manifest.json"))
    assert stopped_at < 60
    time.sleep(3)
    assert c.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert c.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_for(c, job.id)
    assert done.status == "succeeded", done.error
    steps = sorted({e.data["step"] for e in c.fine_tuning.jobs.list_events(job.id, limit=1000).data if e.type == "metrics"})
    assert steps == list(range(1, 61))  # every step once: nothing redone, nothing skipped
    messages = [e.message for e in c.fine_tuning.jobs.list_events(job.id, limit=1000).data]
    assert "The job was paused" in messages and "The job was resumed" in messages
    assert messages.count("Fine-tuning job started") == 1
    assert messages.count("Fine-tuning job resumed from its last checkpoint") == 1


def test_a_supervised_job_trains_and_serves_and_bad_rows_name_their_lines(server, tmp_path):
    c = client(server)
    sft = EXAMPLES.parent / "sft"
    train = c.files.create(file=(sft / "train.jsonl").open("rb"), purpose="fine-tune")
    job = c.fine_tuning.jobs.create(model="bundled:tiny-arith", training_file=train.id, suffix="sft",
                                    method={"type": "supervised", "supervised": {"hyperparameters": {"batch_size": 8}}},
                                    extra_body={"rftkit": {"overrides": ["train.steps=3"]}})
    done = wait_for(c, job.id)
    assert done.status == "succeeded", done.error
    assert c.models.retrieve(done.fine_tuned_model).to_dict()["rftkit"]["lineage"][0]["algorithm"] == "sft"
    assert c.chat.completions.create(model=done.fine_tuned_model, max_tokens=16,
                                     messages=[{"role": "user", "content": "What is 5 + 7 - 2?"}]).choices[0].message.content
    good = (sft / "train.jsonl").read_text().splitlines()[:2]
    bad = tmp_path / "bad-sft.jsonl"
    bad.write_text("\n".join([good[0], '{"messages": [{"role": "user", "content": "no answer"}]}', good[1]]) + "\n")
    f = c.files.create(file=bad.open("rb"), purpose="fine-tune")
    failed = wait_for(c, c.fine_tuning.jobs.create(model="bundled:tiny-arith", training_file=f.id,
                                                   method={"type": "supervised"}).id, 60)
    assert failed.status == "failed" and failed.error.code == "invalid_training_file" and "line 2" in failed.error.message
    pair = tmp_path / "bad-dpo.jsonl"
    pair.write_text('{"messages": [{"role": "user", "content": "1 + 1?"}], "chosen": "2", "rejected": "3"}\n'
                    '{"messages": [{"role": "user", "content": "2 + 2?"}], "chosen": "4"}\n')
    f = c.files.create(file=pair.open("rb"), purpose="fine-tune")
    failed = wait_for(c, c.fine_tuning.jobs.create(model="bundled:tiny-arith", training_file=f.id,
                                                   method={"type": "dpo", "dpo": {}}).id, 60)
    assert failed.status == "failed" and "line 2" in failed.error.message and "line 1" not in failed.error.message
    gone = c.models.delete(done.fine_tuned_model)
    assert gone.deleted and done.fine_tuned_model not in [m.id for m in c.models.list().data]
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model=done.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
