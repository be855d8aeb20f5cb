"""The non-GRPO stages (sft, dpo, reward_model, asft, rejection_sampling) on toy models.

Three kinds of checks: a few training steps change every trainable parameter and log the
stage's metrics (TRL's habit); numbers worked by hand (SFT's loss over answer tokens only,
packed == unpacked, DPO's log 2 at the first step, A-SFT's weights); and the plumbing
(bad data refused before any model loads, resume, a trained reward model as a grader).

"Before training" is read from a probe Trainer that runs `_setup` on the same config in
another run.dir: same seed, same code path, so it starts from the very weights the real
run starts from (the reward model's new `score` head included, which is random).
Rejection sampling uses the bundled model: a random model never ends its turn before
max_new_tokens, so nothing would pass the filter and nothing would train.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file

from tests.conftest import BUNDLED, REPO
from rftkit.algorithms.asft import asft_weights, prompt_groups
from rftkit.algorithms.sft import conversation_examples, sft_pairs_loss
from rftkit.config import load_config
from rftkit.errors import ConfigError, UserError
from rftkit.graders import build_grader
from rftkit.models.reward import conversation_ids, score_pairs
from rftkit.models import load_model, load_tokenizer, prompt_ids
from rftkit.train.loop import Trainer
from rftkit.train.sinks import read_jsonl
from rftkit.train.stages.rejection_sampling import kept_completions
from rftkit.types import Completion, Group, Item, Score

EXAMPLES = REPO / "examples"
DATA = {"sft": "sft", "dpo": "dpo", "reward_model": "dpo", "asft": "asft", "rejection_sampling": "arithmetic"}


# ---- helpers ---------------------------------------------------------------------------
def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def example_rows(name: str, split: str, n: int) -> list[dict]:
    lines = (EXAMPLES / DATA[name] / f"{split}.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def stage_config(name: str, folder: Path, model, run: str, *overrides: str):
    """The stage's example config, shrunk: tiny data sliced from its example files, 3 steps, eval at the end."""
    train = folder / "train.jsonl"
    if not train.exists():
        write_jsonl(train, example_rows(name, "train", 8))
        write_jsonl(folder / "val.jsonl", example_rows(name, "val", 2))
    return load_config(EXAMPLES / name / f"{name}.yaml", [
        f"model.path={model}", f"run.dir={folder / run}", f"data.train={train}", f"data.val={folder / 'val.jsonl'}",
        "train.steps=3", "train.prompts_per_step=4", "train.micro_batch_size=2", "train.lr=1e-3", "train.warmup_steps=0",
        "train.threads=1", "run.eval_interval=3", "run.eval_at_start=false", "run.checkpoint_interval=0",
        "run.sample_interval=0", "rollout.num_generations=4", "rollout.max_new_tokens=40",
        "rejection_sampling.prompts_per_round=4", *overrides,
    ])


def quiet_trainer(cfg) -> Trainer:
    return Trainer(cfg, console=Console(file=io.StringIO()), quiet=True)


def trainables(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def probe(cfg) -> Trainer:
    """A Trainer set up (model loaded, stage built) but never stepped: the run's starting point."""
    trainer = quiet_trainer(cfg)
    trainer._setup(resume=False)
    trainer.sink.close()
    trainer.stage.close()
    return trainer


def run_stage(name: str, folder: Path, model, *overrides: str) -> SimpleNamespace:
    start = probe(stage_config(name, folder, model, "probe", *overrides))
    trainer = quiet_trainer(stage_config(name, folder, model, "run", *overrides))
    final = trainer.train()
    return SimpleNamespace(trainer=trainer, start=start, before=trainables(start.policy.module), final=final,
                           rows=read_jsonl(folder / "run" / "metrics.jsonl"))


def hand_sft_loss(model, pairs, weights=None) -> float:
    """sum over answer tokens of -w * log p(token | everything before it), / answer tokens; one example per forward."""
    total, n_tokens = 0.0, 0
    with torch.no_grad():
        for i, (prompt, answer) in enumerate(pairs):
            logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)  # [T, V]
            w = 1.0 if weights is None else weights[i]
            total -= w * sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(answer))
            n_tokens += len(answer)
    return total / n_tokens


def hand_answer_logp(model, prompt: list[int], answer: list[int]) -> float:
    """log p(answer | prompt), summed over the answer's tokens, from one unpadded forward."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)  # [T, V]
    return sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(answer))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_model_dir):
    """Each stage trained once per module, on demand (several tests read the same run)."""
    cache: dict[str, SimpleNamespace] = {}

    def get(name: str, *overrides: str) -> SimpleNamespace:
        key = " ".join((name, *overrides))
        if key not in cache:
            model = BUNDLED if name == "rejection_sampling" else toy_model_dir
            extra = ("rejection_sampling.rounds=1",) if name == "rejection_sampling" else ()
            cache[key] = run_stage(name, tmp_path_factory.mktemp(name), model, *extra, *overrides)
        return cache[key]

    return get


# ---- 1. every stage trains ---------------------------------------------------------------
STAGE_METRICS = {  # (logged every step, logged at validation)
    "sft": (["train/loss", "train/tokens"], ["val/loss"]),
    "dpo": (["train/loss", "rewards/accuracy", "rewards/margin"], ["val/logp_margin", "val/loss"]),
    "reward_model": (["train/loss", "train/accuracy"], ["val/accuracy", "val/loss"]),
    "asft": (["train/loss", "asft/weight_mean"], ["val/loss", "val/unweighted_loss"]),
    "rejection_sampling": (["train/loss"], ["val/pass@1", "val/reward_mean"]),
}


@pytest.mark.parametrize("name", list(STAGE_METRICS))
def test_stage_changes_every_parameter_logs_its_metrics_and_saves_a_loadable_model(runs, name):
    run = runs(name)
    after = trainables(run.trainer.policy.module)
    assert after.keys() == run.before.keys() and after
    unchanged = [n for n in after if torch.equal(after[n], run.before[n])]
    assert not unchanged, f"{name}: parameters not updated: {unchanged}"
    if name == "reward_model":  # the body's weights and the new head
        assert "score.weight" in after and any(n.startswith("model.layers.") for n in after)

    every_step, at_val = STAGE_METRICS[name]
    assert [r["step"] for r in run.rows] == [1, 2, 3]
    for row in run.rows:
        for key in every_step:
            assert isinstance(row.get(key), (int, float)) and math.isfinite(row[key]), (name, row["step"], key, row.get(key))
    for key in at_val:
        assert isinstance(run.rows[-1].get(key), (int, float)), (name, key, run.rows[-1])
    if name == "rejection_sampling":
        assert run.rows[0]["rs/round"] == 1 and run.rows[0]["rs/kept"] > 0, run.rows[0]
        assert "rs/kept" not in run.rows[1]  # one round: the kept set is drawn once, at step 1

    assert run.final == run.trainer.run_dir / "final"
    if name == "reward_model":
        from transformers import AutoModelForSequenceClassification

        loaded = AutoModelForSequenceClassification.from_pretrained(run.final)
        assert loaded.config.num_labels == 1
    else:
        loaded = load_model(str(run.final))
    saved = dict(loaded.named_parameters())
    for n, value in after.items():
        assert torch.equal(saved[n], value), f"{name}: final/ holds a different {n}"


# ---- 2. SFT: answer tokens only, packing changes nothing -----------------------------------------
TWO_TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"},
             {"role": "assistant", "content": "ANSWER: 5"}, {"role": "user", "content": "And 5 - 7?"},
             {"role": "assistant", "content": "5 - 7 = -2. ANSWER: -2"}]


def test_conversation_examples_are_one_pair_per_assistant_turn(toy_model_dir):
    tok = load_tokenizer(str(toy_model_dir))
    examples = conversation_examples(tok, TWO_TURNS)
    assert len(examples) == 2
    for (prompt, answer), upto, content in zip(examples, (2, 4), ("ANSWER: 5", "5 - 7 = -2. ANSWER: -2")):
        assert answer == tok(content, add_special_tokens=False).input_ids + [tok.eos_token_id]
        assert prompt == prompt_ids(tok, TWO_TURNS[:upto])
        assert tok.decode(prompt).endswith("<|im_start|>assistant\n")
    (p1, a1), (p2, _) = examples
    assert p2[: len(p1) + len(a1)] == p1 + a1  # the first answer is the second turn's context, token for token


@pytest.mark.parametrize("packing,pack_length", [(False, 512), (True, 512), (True, 100)])
def test_sft_pairs_loss_and_gradients_match_a_hand_computation(toy_model_dir, packing, pack_length):
    """Token-mean NLL over answer tokens. Packed in 512: all six pairs share one row; in 100: four rows of one
    or two pairs, padded to a common width (block-diagonal attention must keep each pair to itself)."""
    tok = load_tokenizer(str(toy_model_dir))
    pairs = [e for row in example_rows("sft", "train", 4) for e in conversation_examples(tok, row["messages"])]
    pairs += conversation_examples(tok, TWO_TURNS)
    weights = [1.0, 0.0, 2.5, 1.0, 0.5, 1.5]
    model = load_model(str(toy_model_dir))
    for w in (None, weights):
        want = hand_sft_loss(model, pairs, w)
        got, n_tokens = sft_pairs_loss(model, pairs, 2, packing, pack_length, w, backward=False)
        assert n_tokens == sum(len(a) for _, a in pairs)
        assert got == pytest.approx(want, abs=1e-5)

    def grads(packed: bool, length: int) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        sft_pairs_loss(model, pairs, 2, packed, length, weights)
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    reference = grads(False, 512)
    for n, g in grads(packing, pack_length).items():
        torch.testing.assert_close(g, reference[n], atol=1e-5, rtol=1e-4, msg=f"gradient of {n}")


def test_sft_first_step_loss_is_the_hand_loss_with_and_without_packing(tmp_path, toy_model_dir):
    """Every example in one step: the logged loss is the starting model's answer-token NLL, packed or not."""
    rows = example_rows("sft", "train", 4) + [{"id": "two-turns", "messages": TWO_TURNS}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", example_rows("sft", "val", 2))
    tok = load_tokenizer(str(toy_model_dir))
    pairs = [e for row in rows for e in conversation_examples(tok, row["messages"])]
    assert len(pairs) == 6
    want = hand_sft_loss(load_model(str(toy_model_dir)), pairs)
    logged = {}
    for packing in (True, False):
        cfg = stage_config("sft", tmp_path, toy_model_dir, f"run-{packing}", "train.steps=1", "train.prompts_per_step=6",
                           f"sft.packing={packing}", "sft.pack_length=100")
        quiet_trainer(cfg).train()
        (row,) = read_jsonl(tmp_path / f"run-{packing}" / "metrics.jsonl")
        assert row["train/tokens"] == sum(len(a) for _, a in pairs)  # assistant tokens only, prompts never count
        logged[packing] = row["train/loss"]
    assert logged[True] == pytest.approx(want, abs=1e-5)
    assert logged[False] == pytest.approx(want, abs=1e-5)


# ---- 3. SFT with LoRA ------------------------------------------------------------------------------
def test_sft_lora_trains_only_the_adapter_and_final_loads_merged(runs, toy_model_dir):
    run = runs("sft", "lora.enabled=true", "lora.rank=4")
    model = run.trainer.policy.module
    trained = trainables(model)
    assert trained and all("lora_" in n for n in trained), sorted(trained)[:5]
    assert not [n for n in trained if torch.equal(trained[n], run.before[n])]  # A moves once B is non-zero
    start = dict(run.start.policy.module.named_parameters())
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(p, start[n]) for n, p in frozen), "a base weight changed under LoRA"

    assert (run.final / "adapter_config.json").exists()
    merged = load_model(str(run.final))
    base = load_model(str(toy_model_dir))
    ids = torch.tensor([prompt_ids(run.trainer.tokenizer, TWO_TURNS[:2])])
    with torch.no_grad():
        got, want, before = merged(input_ids=ids).logits, model.eval()(input_ids=ids).logits, base(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, before, atol=1e-4), "the merged adapter changed nothing"


# ---- 4. DPO -------------------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_reference_logps_are_the_starting_models(tmp_path, toy_model_dir, loss):
    stage = probe(stage_config("dpo", tmp_path, toy_model_dir, "probe", f"dpo.loss={loss}")).stage
    model = load_model(str(toy_model_dir))
    assert len(stage.examples) == 8 and len(stage.val_examples) == 2
    for pair in stage.examples + stage.val_examples:
        for which in ("chosen", "rejected"):
            want = hand_answer_logp(model, pair["prompt"], pair[which])
            if loss == "ipo":  # IPO compares per-token averages
                want /= len(pair[which])
            assert pair[f"ref_{which}"] == pytest.approx(want, abs=1e-4), which


@pytest.mark.parametrize("loss,first", [("sigmoid", math.log(2)), ("ipo", (1 / (2 * 0.1)) ** 2)])
def test_dpo_first_step_loss_is_at_the_reference(tmp_path, toy_model_dir, loss, first):
    """Policy == reference at step 1, so h = 0: sigmoid gives log 2, IPO (1 / (2 beta))^2; then it moves."""
    rows = run_stage("dpo", tmp_path, toy_model_dir, f"dpo.loss={loss}", "dpo.beta=0.1").rows
    assert rows[0]["train/loss"] == pytest.approx(first, rel=1e-4)
    assert rows[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert rows[-1]["train/loss"] != pytest.approx(first, rel=1e-3), "the loss never moved"
    assert math.isfinite(rows[-1]["val/logp_margin"])


def test_dpo_ipo_with_label_smoothing_is_a_config_error(toy_model_dir):
    with pytest.raises(ConfigError, match="label_smoothing"):
        load_config(EXAMPLES / "dpo" / "dpo.yaml", [f"model.path={toy_model_dir}", "dpo.loss=ipo", "dpo.label_smoothing=0.1"])


# ---- 5. reward model ----------------------------------------------------------------------------
def assert_grader_matches_model(final: Path, model, tokenizer) -> None:
    grader = build_grader({"type": "reward_model", "path": str(final)})
    calls = []
    for i, row in enumerate(example_rows("reward_model", "val", 2)):
        item = Item(id=f"q{i}", messages=row["messages"])
        calls += [(item, row["chosen"]), (item, row["rejected"])]
    with torch.no_grad():
        model.eval()
        want = score_pairs(model, [conversation_ids(tokenizer, item.messages, text) for item, text in calls],
                           tokenizer.pad_token_id).tolist()
    assert len({round(s, 4) for s in want}) == len(calls)  # distinct: a mix-up would show
    offset = model.config.score_offset  # the stage centres the scores (finalize) and saves the offset
    assert json.loads((final / "config.json").read_text())["score_offset"] == pytest.approx(offset)
    got = [s.reward for s in grader.grade_batch(calls)]
    assert got == pytest.approx([w - offset for w in want], abs=1e-5)


def test_reward_model_scores_are_centred_on_the_training_answers(runs):
    run = runs("reward_model")
    stage, model = run.trainer.stage, run.trainer.policy.module
    answers = [ids for p in stage.examples for ids in (p["chosen"], p["rejected"])]
    with torch.no_grad():
        model.eval()
        raw = score_pairs(model, answers, run.trainer.tokenizer.pad_token_id)
    assert model.config.score_offset == pytest.approx(float(raw.mean()), abs=1e-5)
    assert abs(model.config.score_offset) > 1e-4  # there was an offset to remove


def test_reward_model_final_is_a_grader_with_the_trained_scores(runs):
    run = runs("reward_model")
    assert_grader_matches_model(run.final, run.trainer.policy.module, run.trainer.tokenizer)


def test_reward_model_lora_final_is_merged_and_grades(runs, toy_model_dir):
    run = runs("reward_model", "lora.enabled=true", "lora.rank=4")
    trained = run.before  # what the optimizer saw: the adapter and a full copy of the head
    assert all("lora_" in n or "score.modules_to_save" in n for n in trained), sorted(trained)
    assert any("lora_" in n for n in trained) and any("score.modules_to_save" in n for n in trained), sorted(trained)
    assert not (run.final / "adapter_config.json").exists() and (run.final / "config.json").exists()
    saved, base = load_file(run.final / "model.safetensors"), load_file(toy_model_dir / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(saved[q], base[q]), "the adapter was not merged into final/"
    head = next(p for n, p in trained.items() if "score.modules_to_save" in n)
    assert not torch.equal(saved["score.weight"], head), "the head was not trained (or not saved)"
    assert_grader_matches_model(run.final, run.trainer.policy.module, run.trainer.tokenizer)


# ---- 6. rejection sampling ------------------------------------------------------------------------
def _completion(text: str, reward: float | None, finish: str = "stop", graded: bool = True) -> Completion:
    return Completion(text=text, token_ids=[ord(ch) for ch in text], logprobs=[], finish_reason=finish,
                      score=Score(reward=reward) if graded else None)


def test_kept_completions_by_hand():
    item = Item(id="q", messages=[{"role": "user", "content": "?"}])
    first = Group(item, [1, 2], [_completion("a", 1.0), _completion("b", 0.4), _completion("c", 0.5),
                                 _completion("d", 1.0)])  # d: over max_per_prompt
    second = Group(item, [3], [_completion("x", 1.0, finish="length"), _completion("y", None),
                               _completion("w", 1.0, graded=False), _completion("z", 1.0), _completion("z", 1.0),
                               _completion("x", 0.9), _completion("v", 1.0)])
    ids = lambda s: [ord(ch) for ch in s]  # noqa: E731
    assert kept_completions([first, second], threshold=0.5, max_per_prompt=2) == [
        ([1, 2], ids("a")), ([1, 2], ids("c")), ([3], ids("z")), ([3], ids("x"))]
    assert kept_completions([first, second], threshold=1.0, max_per_prompt=5) == [
        ([1, 2], ids("a")), ([1, 2], ids("d")), ([3], ids("z")), ([3], ids("v"))]


def test_rejection_sampling_resumed_run_matches_an_uninterrupted_one(tmp_path):
    """Two rounds over 4 steps; a run stopped after step 3 (kept set of round 2 in its checkpoint) and
    resumed to 4 steps ends with the uninterrupted run's weights and step-4 loss."""
    overrides = ("train.steps=4", "rejection_sampling.rounds=2", "train.prompts_per_step=2", "run.eval_interval=0",
                 "run.checkpoint_interval=1")
    full = quiet_trainer(stage_config("rejection_sampling", tmp_path, BUNDLED, "full", *overrides))
    full.train()
    stopped = tmp_path / "stopped"
    quiet_trainer(stage_config("rejection_sampling", tmp_path, BUNDLED, "stopped", *overrides, "train.steps=3")).train()
    resumed = quiet_trainer(stage_config("rejection_sampling", tmp_path, BUNDLED, "stopped", *overrides))
    resumed.train(resume=True)

    a, b = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(stopped / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["step"] for r in a if "rs/round" in r] == [1, 3] and a[2]["rs/kept"] > 0  # round 2 trains
    assert [r["train/loss"] for r in a] == [r["train/loss"] for r in b]
    at_3 = load_file(stopped / "checkpoints" / "step-000003" / "weights.safetensors")
    end_a, end_b = trainables(full.policy.module), trainables(resumed.policy.module)
    assert any(not torch.equal(end_b[n], at_3[n]) for n in at_3), "step 4 changed nothing; the test proves nothing"
    for n in end_a:
        assert torch.equal(end_a[n], end_b[n]), f"{n} differs after resume"


# ---- 7. bad data is refused before any model loads -------------------------------------------------
BAD_ROWS = {
    "sft": ({"id": "bad", "messages": [{"role": "user", "content": "What is 1 + 1?"}]}, "last message is from 'user'"),
    "dpo": ({"id": "bad", "messages": [{"role": "user", "content": "What is 1 + 1?"}], "chosen": "2", "rejected": "2"},
            "`chosen` and `rejected` are the same text"),
    "asft": ({"id": "bad", "messages": [{"role": "user", "content": "What is 1 + 1?"}], "response": "2"},
             "no `reward` field"),
}


@pytest.mark.parametrize("name", list(BAD_ROWS))
def test_bad_row_is_a_user_error_naming_file_and_line(tmp_path, name):
    bad, reason = BAD_ROWS[name]
    train = write_jsonl(tmp_path / "train.jsonl", [*example_rows(name, "train", 2), bad, example_rows(name, "train", 3)[2]])
    cfg = stage_config(name, tmp_path, tmp_path / "no-such-model", "run", "run.eval_interval=0", "data.val=null")
    trainer = quiet_trainer(cfg)
    with pytest.raises(UserError) as err:
        trainer.train()
    assert f"{train}:3: " in str(err.value) and reason in str(err.value), str(err.value)
    assert f"{train}:4" not in str(err.value)
    assert not (tmp_path / "run").exists(), "the run started before the data was checked"


# ---- 8. A-SFT weights ---------------------------------------------------------------------------
def test_asft_failed_gradings_get_weight_zero_and_the_rest_are_worked_by_hand(tmp_path, toy_model_dir):
    def row(i, question, reward):
        return {"id": f"r{i}", "messages": [{"role": "user", "content": question}], "response": f"ANSWER: {i}",
                "reward": reward}

    rewards = [1.0, 0.0, None, 1.0, 0.0]
    questions = ["What is 1 + 2?"] * 3 + ["What is 3 + 4?"] * 2
    write_jsonl(tmp_path / "train.jsonl", [row(i, q, r) for i, (q, r) in enumerate(zip(questions, rewards))])
    write_jsonl(tmp_path / "val.jsonl", example_rows("asft", "val", 2))
    stage = probe(stage_config("asft", tmp_path, toy_model_dir, "probe", "asft.temperature=0.5",
                               "asft.baseline=prompt_mean", "asft.normalization=mean_one", "asft.max_weight=20")).stage
    # prompt means 0.5 and 0.5 (the null row is left out); centred +-0.5; unbiased std sqrt(1/3);
    # exp(+-0.5 / sqrt(1/3) / 0.5) = exp(+-sqrt(3)); then divided by their mean over the 4 valid rows
    up, down = math.exp(math.sqrt(3)), math.exp(-math.sqrt(3))
    mean = (up + down) / 2
    assert stage.weights == pytest.approx([up / mean, down / mean, 0.0, up / mean, down / mean], rel=1e-5)
    nan = torch.tensor([float("nan") if r is None else r for r in rewards], dtype=torch.float64)
    direct = asft_weights(nan, prompt_groups(questions), "prompt_mean", 0.5, 20, "mean_one")
    assert stage.weights == pytest.approx(direct.tolist())
    assert len(stage.examples) == len(stage.weights) == 5


# ---- offline stages improve their own held-out metric (a sign-flipped update would not) ----------
HELD_OUT = {"sft": ("val/loss", "down"), "asft": ("val/loss", "down")}


@pytest.mark.parametrize("name", list(HELD_OUT))
def test_offline_stage_improves_its_held_out_metric(runs, name):
    run = runs(name, "train.steps=6", "run.eval_interval=6", "run.eval_at_start=true")
    metric, way = HELD_OUT[name]
    start, end = run.rows[0], run.rows[-1]
    assert start["step"] == 0 and end["step"] == 6, [r["step"] for r in run.rows]
    better = end[metric] < start[metric] if way == "down" else end[metric] > start[metric]
    assert better, f"{name}: {metric} went from {start[metric]:.4f} to {end[metric]:.4f} (wanted {way})"


# DPO and the reward model learn a preference, and a random toy model cannot learn "the right sum" from 8
# pairs (on the example pairs, whose rejected answer has one wrong digit, DPO's val/logp_margin went
# 0.97 -> -0.19 in 6 steps: docs/LOG.md). So these pairs carry a preference that generalises: the rejected
# answer is the chosen one followed by a hedge. Trained on 32 pairs, measured on 16 others.
PREFERENCE = {"dpo": [("val/logp_margin", "up")], "reward_model": [("val/loss", "down"), ("val/accuracy", "up")]}


@pytest.mark.parametrize("name", list(PREFERENCE))
def test_preference_stage_improves_its_held_out_metric(tmp_path, toy_model_dir, name):
    def pairs(split, n):
        rows = example_rows(name, split, n)
        return [{**r, "rejected": r["chosen"] + " I am not sure."} for r in rows]

    write_jsonl(tmp_path / "train.jsonl", pairs("train", 32))
    write_jsonl(tmp_path / "val.jsonl", pairs("val", 16))
    cfg = stage_config(name, tmp_path, toy_model_dir, "run", "train.steps=8", "run.eval_interval=8",
                       "run.eval_at_start=true", "train.prompts_per_step=8", "train.micro_batch_size=8")
    quiet_trainer(cfg).train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    start, end = rows[0], rows[-1]
    assert start["step"] == 0 and end["step"] == 8
    for metric, way in PREFERENCE[name]:
        better = end[metric] < start[metric] if way == "down" else end[metric] > start[metric]
        assert better, f"{name}: {metric} went from {start[metric]:.4f} to {end[metric]:.4f} (wanted {way})"


@pytest.mark.slow
def test_rejection_sampling_improves_held_out_pass_at_1(tmp_path):
    """One round of the example config (256 prompts x 8 samples, the correct ones kept, 30 SFT steps) on the
    bundled model: held-out pass@1 over 100 items x 8 samples (measured: 0.3125 -> 0.375; 3 rounds: 0.419)."""
    cfg = load_config(EXAMPLES / "rejection_sampling" / "rejection_sampling.yaml", [
        f"run.dir={tmp_path / 'run'}", "rejection_sampling.rounds=1", "train.steps=30", "run.eval_interval=30",
        "run.eval_samples=8", "run.checkpoint_interval=0"])
    quiet_trainer(cfg).train()
    rows = [r for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "val/pass@1" in r]
    start, end = rows[0], rows[-1]
    assert start["step"] == 0 and end["step"] == 30
    assert end["val/pass@1"] > start["val/pass@1"], (start["val/pass@1"], end["val/pass@1"])
