"""KTO: the loss against values worked by hand (comments show the work), the KL pairs, the `unpaired` rows, the stage.

TRL cross-checks on random inputs live in test_trl_parity.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import warnings

import pytest
import torch
from torch.testing import assert_close

from tests.conftest import BUNDLED, REPO
from tests.train.test_stages import hand_answer_logp, probe, quiet_trainer, trainables, write_jsonl
from rftkit.algorithms.kto import kl_baseline, kl_partners, kto_loss
from rftkit.config import load_config
from rftkit.data.rows import load_rows
from rftkit.errors import UserError
from rftkit.train.sinks import read_jsonl

EXAMPLE = REPO / "examples" / "kto"

# desirable: policy [-1, -3] vs ref [-2, -2] -> r = [+1, -1]; undesirable: policy -4 vs ref -2 -> r = -2
# KL pairs: policy [-5, -6, -3] vs ref [-6, -6, -5] -> log-ratios [1, 0, 2], mean 1 = z0
HAND = dict(
    policy_desirable_logps=torch.tensor([-1.0, -3.0]),
    policy_undesirable_logps=torch.tensor([-4.0]),
    reference_desirable_logps=torch.tensor([-2.0, -2.0]),
    reference_undesirable_logps=torch.tensor([-2.0]),
)
KL_POLICY, KL_REF = torch.tensor([-5.0, -6.0, -3.0]), torch.tensor([-6.0, -6.0, -5.0])


def test_kto_loss_by_hand():
    # beta 0.5, z0 = 1.
    # desirable: 1 - sigmoid(0.5 (1 - 1)) = 1 - sigmoid(0) = 0.5; 1 - sigmoid(0.5 (-1 - 1)) = 1 - sigmoid(-1) = 0.731059
    # undesirable: 1 - sigmoid(0.5 (z0 - r)) = 1 - sigmoid(0.5 * 3) = 1 - 0.817574 = 0.182426
    # loss: the plain mean of the three, (0.5 + 0.731059 + 0.182426) / 3 = 0.471162
    # rewards beta * r: desirable [0.5, -0.5], undesirable [-1.0]
    # d loss / d policy_desirable = -beta sigmoid'(x) / 3, sigmoid'(x) = s(1 - s): x = 0: -0.5 * 0.25 / 3 = -0.041667;
    #   x = -1: -0.5 * 0.196612 / 3 = -0.032769; d loss / d policy_undesirable = +0.5 * 0.149146 / 3 = 0.024858
    good = HAND["policy_desirable_logps"].clone().requires_grad_()
    bad = HAND["policy_undesirable_logps"].clone().requires_grad_()
    kl = kl_baseline(KL_POLICY, KL_REF)
    assert_close(kl, torch.tensor(1.0))
    out = kto_loss(**{**HAND, "policy_desirable_logps": good, "policy_undesirable_logps": bad}, kl=kl, beta=0.5)
    assert_close(out.loss, torch.tensor(0.471162))
    assert_close(out.desirable_losses, torch.tensor([0.5, 0.731059]))
    assert_close(out.undesirable_losses, torch.tensor([0.182426]))
    assert_close(out.rewards_desirable, torch.tensor([0.5, -0.5]))
    assert_close(out.rewards_undesirable, torch.tensor([-1.0]))
    out.loss.backward()
    assert_close(good.grad, torch.tensor([-0.041667, -0.032769]))
    assert_close(bad.grad, torch.tensor([0.024858]))
    assert not out.rewards_desirable.requires_grad and not out.rewards_undesirable.requires_grad


def test_weights_scale_their_own_side_and_the_mean_is_over_all_examples():
    # desirable_weight 2, undesirable_weight 0.5: (2 * (0.5 + 0.731059) + 0.5 * 0.182426) / 3 = 0.851110
    # (TRL's mean of the weighted losses: not renormalised by the weights)
    out = kto_loss(**HAND, kl=torch.tensor(1.0), beta=0.5, desirable_weight=2.0, undesirable_weight=0.5)
    assert_close(out.loss, torch.tensor(0.851110))
    assert_close(out.desirable_losses, torch.tensor([1.0, 1.462117]))
    assert_close(out.undesirable_losses, torch.tensor([0.091213]))
    # only one side weighted: the other side's losses do not move
    more_bad = kto_loss(**HAND, kl=torch.tensor(1.0), beta=0.5, undesirable_weight=3.0)
    assert_close(more_bad.desirable_losses, torch.tensor([0.5, 0.731059]))
    assert_close(more_bad.undesirable_losses, torch.tensor([3 * 0.182426]))


def test_kl_baseline_is_clamped_at_zero_and_detached():
    # log-ratios [-1, -1]: mean -1, clamped to 0. Then desirable 1 - sigmoid(0.5 r) = [1 - s(0.5), 1 - s(-0.5)]
    # = [0.377541, 0.622459]; undesirable 1 - sigmoid(-0.5 r) = 1 - s(1) = 0.268941; mean 0.422980
    policy_kl = torch.tensor([-7.0, -7.0], requires_grad=True)
    kl = kl_baseline(policy_kl, torch.tensor([-6.0, -6.0]))
    assert kl.item() == 0.0 and not kl.requires_grad
    out = kto_loss(**HAND, kl=kl, beta=0.5)
    assert_close(out.loss, torch.tensor(0.422980))
    # with z0 = 1 the same answers cost more on the desirable side, less on the undesirable one
    at_one = kto_loss(**HAND, kl=torch.tensor(1.0), beta=0.5)
    assert (at_one.desirable_losses > out.desirable_losses).all() and (at_one.undesirable_losses < out.undesirable_losses).all()
    # no gradient reaches the KL pairs' log-probs: z0 only sets where the sigmoid saturates
    policy_kl = torch.tensor([-5.0, -6.0, -3.0], requires_grad=True)
    good = HAND["policy_desirable_logps"].clone().requires_grad_()
    loss = kto_loss(**{**HAND, "policy_desirable_logps": good}, kl=kl_baseline(policy_kl, KL_REF), beta=0.5).loss
    loss.backward()
    assert policy_kl.grad is None and good.grad is not None


def test_one_sided_batches_and_bad_arguments():
    # only desirable: mean over the two desirable losses (0.5 + 0.731059) / 2 = 0.615530
    empty = torch.zeros(0)
    only_good = dict(HAND, policy_undesirable_logps=empty, reference_undesirable_logps=empty)
    assert_close(kto_loss(**only_good, kl=torch.tensor(1.0), beta=0.5).loss, torch.tensor(0.615530))
    with pytest.raises(ValueError, match="at least one"):
        kto_loss(empty, empty, empty, empty, kl=torch.tensor(0.0), beta=0.5)
    with pytest.raises(ValueError, match="beta"):
        kto_loss(**HAND, kl=torch.tensor(0.0), beta=0.0)
    with pytest.raises(ValueError, match="weight"):
        kto_loss(**HAND, kl=torch.tensor(0.0), beta=0.1, desirable_weight=0.0)


def test_kl_partners_rotate_within_blocks_and_never_pair_an_example_with_itself():
    assert kl_partners(4, 4) == [3, 0, 1, 2]  # TRL: (x1, y4), (x2, y1), (x3, y2), (x4, y3)
    assert kl_partners(5, 3) == [2, 0, 1, 4, 3]
    assert kl_partners(7, 3) == [2, 0, 1, 6, 3, 4, 5]  # a last block of one joins the one before
    for n in range(2, 30):
        for block in range(2, 10):
            partners = kl_partners(n, block)
            assert sorted(partners) == list(range(n)), (n, block)  # every completion used once
            assert all(j != i for i, j in enumerate(partners)), (n, block)
    for n, block in ((1, 4), (4, 1)):
        with pytest.raises(ValueError, match="at least 2"):
            kl_partners(n, block)


# ---- the `unpaired` row kind ------------------------------------------------------------------
PROMPT = [{"role": "user", "content": "What is 1 + 1?"}]


def test_unpaired_rows_accept_trl_forms_and_the_response_alias(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [
        {"id": "a", "messages": PROMPT, "completion": "ANSWER: 2", "label": True},
        {"messages": PROMPT, "completion": {"role": "assistant", "content": "ANSWER: 3"}, "label": False},
        {"messages": PROMPT, "completion": [{"role": "assistant", "content": "ANSWER: 2"}], "label": True},
        {"messages": PROMPT, "response": "ANSWER: 4", "label": False},
    ])
    rows = load_rows(path, "unpaired")
    assert [(r.id, r.completion, r.label) for r in rows] == [
        ("a", "ANSWER: 2", True), ("line-2", "ANSWER: 3", False), ("line-3", "ANSWER: 2", True), ("line-4", "ANSWER: 4", False)]
    assert rows[0].messages == PROMPT


BAD_UNPAIRED = [
    ({"messages": PROMPT, "completion": "2", "label": 1}, "`label` must be true or false, a JSON boolean (got 1)"),
    ({"messages": PROMPT, "completion": "2", "label": 0}, "`label` must be true or false, a JSON boolean (got 0)"),
    ({"messages": PROMPT, "completion": "2", "label": "true"}, 'a JSON boolean (got "true")'),
    ({"messages": PROMPT, "completion": "2", "label": None}, "a JSON boolean (got null)"),
    ({"messages": PROMPT, "completion": "2"}, "no `label` field"),
    ({"messages": PROMPT, "label": True}, "no `completion` field"),
    ({"messages": PROMPT, "completion": "2", "response": "2", "label": True}, "both `completion` and `response`"),
    ({"messages": PROMPT, "completion": "  ", "label": True}, "`completion` is empty"),
    ({"messages": PROMPT, "completion": {"role": "user", "content": "2"}, "label": True}, "must be the assistant's"),
    ({"prompt": PROMPT, "completion": "2", "label": True}, "TRL's `prompt` is spelled `messages` here"),
    ({"messages": [*PROMPT, {"role": "assistant", "content": "2"}], "completion": "2", "label": True}, "last message"),
]


@pytest.mark.parametrize("bad,reason", BAD_UNPAIRED)
def test_bad_unpaired_row_is_reported_with_file_and_line(tmp_path, bad, reason):
    good = {"messages": PROMPT, "completion": "ANSWER: 2", "label": True}
    path = write_jsonl(tmp_path / "rows.jsonl", [good, bad, {**good, "label": False}])
    with pytest.raises(UserError) as err:
        load_rows(path, "unpaired")
    message = str(err.value)
    assert f"{path}:2: " in message and reason in message, message
    assert f"{path}:1:" not in message and f"{path}:3:" not in message, message


# ---- the example data -------------------------------------------------------------------------
def _stage_data():
    spec = importlib.util.spec_from_file_location("make_stage_data", REPO / "scripts" / "make_stage_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_files_are_the_generators_and_unpaired_with_one_slip(tmp_path):
    stage_data = _stage_data()
    written = stage_data.write_stage_data(tmp_path, stage_data.KTO_FILES)
    assert {p.relative_to(tmp_path).as_posix() for p in written} == {"kto/train.jsonl", "kto/val.jsonl"}
    for split in ("train", "val"):
        made = (tmp_path / "kto" / f"{split}.jsonl").read_bytes()
        assert (EXAMPLE / f"{split}.jsonl").read_bytes() == made, f"examples/kto/{split}.jsonl is stale: run the script"
        rows = load_rows(EXAMPLE / f"{split}.jsonl", "unpaired")
        assert len({repr(r.messages) for r in rows}) == len(rows), "a prompt appears twice: the file holds pairs"
        labels = [r.label for r in rows]
        assert 0.4 < sum(labels) / len(labels) < 0.6, split
        for r, raw in zip(rows, map(json.loads, made.decode().splitlines())):
            solution = f"ANSWER: {raw['reference_answer']}"
            assert r.completion.endswith(solution) == r.label, r.id  # desirable iff the answer is right
    # the slipped answers are DPO's kind of rejection (tests/data/test_stage_data.py checks slipped_solution)
    train_q = {json.dumps(r.messages) for r in load_rows(EXAMPLE / "train.jsonl", "unpaired")}
    val_q = {json.dumps(r.messages) for r in load_rows(EXAMPLE / "val.jsonl", "unpaired")}
    test_lines = (REPO / "examples" / "arithmetic" / "test.jsonl").read_text().splitlines()
    test_q = {json.dumps(json.loads(line)["messages"]) for line in test_lines}
    assert not train_q & val_q and not train_q & test_q


# ---- the stage ------------------------------------------------------------------------------------
def example_rows(split: str, n: int) -> list[dict]:
    return [json.loads(line) for line in (EXAMPLE / f"{split}.jsonl").read_text().splitlines()[:n]]


def kto_config(folder, model, run: str, *overrides: str):
    """examples/kto/kto.yaml shrunk: 8 train and 4 val rows of the example files (both labels in each), 3 steps."""
    if not (folder / "train.jsonl").exists():
        write_jsonl(folder / "train.jsonl", example_rows("train", 8))
        write_jsonl(folder / "val.jsonl", example_rows("val", 4))
    return load_config(EXAMPLE / "kto.yaml", [
        f"model.path={model}", f"run.dir={folder / run}", f"data.train={folder / 'train.jsonl'}",
        f"data.val={folder / 'val.jsonl'}", "train.steps=3", "train.prompts_per_step=4", "train.micro_batch_size=2",
        "train.lr=1e-3", "train.warmup_steps=0", "train.threads=1", "run.eval_interval=3", "run.eval_at_start=false",
        "run.checkpoint_interval=0", "run.sample_interval=0", *overrides,
    ])


def test_reference_logps_and_kl_pairs_are_the_starting_models(tmp_path, toy_model_dir):
    stage = probe(kto_config(tmp_path, toy_model_dir, "probe")).stage
    model = stage.policy.module
    assert len(stage.examples) == 8 and len(stage.val_examples) == 4
    # train rows in blocks of prompts_per_step = 4: example i borrows the completion of kl_partners(8, 4)[i]
    for examples, partners in ((stage.examples, [3, 0, 1, 2, 7, 4, 5, 6]), (stage.val_examples, [3, 0, 1, 2])):
        for e, j in zip(examples, partners):
            assert e["kl_completion"] == examples[j]["completion"] and e["kl_completion"] != e["completion"]
            assert e["ref_completion"] == pytest.approx(hand_answer_logp(model, e["prompt"], e["completion"]), abs=1e-4)
            assert e["ref_kl_completion"] == pytest.approx(hand_answer_logp(model, e["prompt"], e["kl_completion"]), abs=1e-4)
    assert [e["label"] for e in stage.examples] == [r["label"] for r in example_rows("train", 8)]


def test_first_step_is_at_the_reference_then_every_parameter_moves(tmp_path, toy_model_dir):
    """Policy == reference at step 1: r = 0 and z0 = 0, so each loss is 1 - sigmoid(0) = 0.5 times its weight."""
    cfg = kto_config(tmp_path, toy_model_dir, "run", "kto.desirable_weight=2.0", "kto.undesirable_weight=1.0")
    start = trainables(probe(kto_config(tmp_path, toy_model_dir, "probe")).policy.module)
    trainer = quiet_trainer(cfg)
    trainer.train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    first = rows[0]
    share = first["kto/desirable_fraction"]
    assert first["train/loss"] == pytest.approx(0.5 * (2.0 * share + 1.0 * (1 - share)), rel=1e-5)
    assert first["kto/kl"] == 0.0 and first["kto/rewards_desirable"] == pytest.approx(0.0, abs=1e-6)
    for key in ("train/loss", "kto/kl", "actor/grad_norm", "actor/lr"):
        assert all(key in r for r in rows), key
    assert {"val/loss", "val/reward_margin", "val/kl"} <= set(rows[-1])
    assert rows[-1]["train/loss"] != pytest.approx(first["train/loss"], rel=1e-3), "the loss never moved"
    end = trainables(trainer.policy.module)
    unchanged = [n for n in start if torch.equal(start[n], end[n])]
    assert not unchanged, f"not trained: {unchanged}"


def test_micro_batches_change_speed_not_the_step(tmp_path, toy_model_dir):
    """z0 is estimated over the whole step and each micro-batch's mean is weighted by its share."""
    metrics = {}
    for micro in (1, 4):
        quiet_trainer(kto_config(tmp_path, toy_model_dir, f"micro{micro}", f"train.micro_batch_size={micro}")).train()
        metrics[micro] = read_jsonl(tmp_path / f"micro{micro}" / "metrics.jsonl")
    for a, b in zip(metrics[1], metrics[4]):
        for key in ("train/loss", "kto/kl", "kto/rewards_undesirable", "actor/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert metrics[1][-1]["train/loss"] != metrics[1][0]["train/loss"]


def test_resumed_run_matches_an_uninterrupted_one(tmp_path, toy_model_dir):
    overrides = ("train.steps=4", "run.checkpoint_interval=2", "run.eval_interval=0")
    full = quiet_trainer(kto_config(tmp_path, toy_model_dir, "full", *overrides))
    full.train()
    quiet_trainer(kto_config(tmp_path, toy_model_dir, "stopped", *overrides, "train.steps=2")).train()
    resumed = quiet_trainer(kto_config(tmp_path, toy_model_dir, "stopped", *overrides))
    resumed.train(resume=True)
    a, b = read_jsonl(tmp_path / "full" / "metrics.jsonl"), read_jsonl(tmp_path / "stopped" / "metrics.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [r["train/loss"] for r in a] == pytest.approx([r["train/loss"] for r in b], rel=1e-6)
    end_a, end_b = trainables(full.policy.module), trainables(resumed.policy.module)
    for n in end_a:
        assert torch.equal(end_a[n], end_b[n]), f"{n} differs after resume"


def test_one_sided_files_warn_and_a_single_example_step_is_refused(tmp_path, toy_model_dir):
    write_jsonl(tmp_path / "train.jsonl", [r for r in example_rows("train", 20) if r["label"]][:6])
    write_jsonl(tmp_path / "val.jsonl", example_rows("val", 4))
    with pytest.warns(UserWarning, match=r"data.train holds only desirable \(label: true\) examples"):
        quiet_trainer(kto_config(tmp_path, toy_model_dir, "run")).stage.prepare()
    (tmp_path / "both").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # both labels in both files (the example slices): no warning
        quiet_trainer(kto_config(tmp_path / "both", toy_model_dir, "run")).stage.prepare()
    with pytest.raises(UserError, match="prompts_per_step >= 2"):
        quiet_trainer(kto_config(tmp_path, toy_model_dir, "run", "train.prompts_per_step=1")).stage.prepare()


def test_bad_label_stops_the_run_before_any_model_loads(tmp_path):
    rows = example_rows("train", 3)
    rows[1] = {**rows[1], "label": 1}
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "val.jsonl", example_rows("val", 4))
    with pytest.raises(UserError) as err:
        quiet_trainer(kto_config(tmp_path, tmp_path / "no-such-model", "run")).train()
    assert f"{train}:2: `label` must be true or false" in str(err.value)
    assert not (tmp_path / "run").exists(), "the run started before the data was checked"


@pytest.mark.slow
def test_bundled_model_raises_its_held_out_reward_margin(tmp_path):
    """The example's config and data on the bundled model, shrunk: 16 steps x 16 examples from 256 train rows,
    validated on 64 held-out rows. KTO must raise val/reward_margin (desirable minus undesirable implicit
    reward) and lower val/loss; a sign-flipped update would lower the margin."""
    write_jsonl(tmp_path / "train.jsonl", example_rows("train", 256))
    val = example_rows("val", 64)
    write_jsonl(tmp_path / "val.jsonl", val)
    cfg = kto_config(tmp_path, BUNDLED, "run", "train.steps=16", "train.prompts_per_step=16", "train.micro_batch_size=16",
                     "train.lr=1e-4", "run.eval_interval=16", "run.eval_at_start=true", "train.threads=2")
    quiet_trainer(cfg).train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    start, end = rows[0], rows[-1]
    assert start["step"] == 0 and end["step"] == 16
    # at the start r = 0 and z0 = 0: each loss is 0.5 times its weight (the example: desirable 2, undesirable 1)
    share = sum(r["label"] for r in val) / len(val)
    assert cfg.kto.desirable_weight == 2.0 and cfg.kto.undesirable_weight == 1.0
    assert start["val/loss"] == pytest.approx(0.5 * (2.0 * share + (1 - share)), abs=1e-6)
    assert start["val/reward_margin"] == pytest.approx(0.0, abs=1e-6)
    assert end["val/reward_margin"] > 0.05, end  # measured 0.142
    assert end["val/loss"] < start["val/loss"], end
    assert math.isfinite(end["val/kl"])
