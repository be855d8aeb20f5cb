"""GRPO variants end to end on the toy model, and chaining runs with init_from.

Config refusal of unknown variant names; dynamic sampling's refill; mu > 1 (ratios depart
from 1 and clip); KL as a reward penalty or a loss term; the overlong penalty; init_from a
run, a checkpoint and a LoRA checkpoint, with lineage.json. Clip-higher against hand-worked
numbers is in tests/algorithms/test_grpo.py (test_clip_higher_by_hand); the update with stored
old log-probs in tests/policy/test_grpo_update.py.

The grader is a TRL-style reward function written to tmp_path: a coin that pays 1 for about
one completion in five, decided by a hash of the text, so it is deterministic and some groups
are all-equal while others are not.
"""

import math
import re

import pytest
import torch
from safetensors.torch import load_file
from torch.testing import assert_close

from tests.conftest import EXAMPLES, run_cli

from rftkit.algorithms.asft import BASELINES
from rftkit.algorithms.dpo import LOSSES
from rftkit.algorithms.grpo import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS
from rftkit.config import load_config
from rftkit.errors import ConfigError, UserError
from rftkit.models import load_model
from rftkit.train.lineage import read_lineage
from rftkit.train.loop import Callback, Trainer
from rftkit.train.sinks import read_jsonl
from rftkit.train.stages import STAGES
from rftkit.train.stages.grpo import GRPOStage
from rftkit.types import Completion, Group, Item, Score

COIN = """import zlib

def reward(completions, **kwargs):
    return [1.0 if zlib.crc32(c.encode()) % 5 == 0 else 0.0 for c in completions]
"""
CONSTANT = """def reward(completions, **kwargs):
    return [1.0 for _ in completions]
"""


@pytest.fixture(scope="module")
def graders(tmp_path_factory) -> dict[str, list[str]]:
    root = tmp_path_factory.mktemp("graders")
    out = {}
    for name, source in (("coin", COIN), ("constant", CONSTANT)):
        (root / f"{name}_reward.py").write_text(source)
        out[name] = ["grader.type=reward_function", f"grader.path={root / f'{name}_reward.py'}"]
    return out


def grpo_config(toy_model_dir, run_dir, *overrides):
    """The arithmetic GRPO example shrunk to the toy model: 2 steps of 2 prompts x 4 completions of <= 8 tokens."""
    return load_config(EXAMPLES / "grpo.yaml", [
        f"model.path={toy_model_dir}", f"run.dir={run_dir}", "run.eval_interval=0", "run.checkpoint_interval=0",
        "run.sample_interval=0", "train.steps=2", "train.prompts_per_step=2", "rollout.num_generations=4",
        "train.micro_batch_size=8", "rollout.max_new_tokens=8", "train.lr=1e-2", *overrides,
    ])


class StepResults(Callback):
    """Keeps every step's StepResult (its graded groups and advantages)."""

    def __init__(self):
        self.results = {}

    def on_step_end(self, step, result):
        self.results[step] = result


def train(cfg, callbacks=()) -> tuple[Trainer, list[dict]]:
    trainer = Trainer(cfg, quiet=True, callbacks=callbacks)
    trainer.train()
    return trainer, read_jsonl(trainer.run_dir / "metrics.jsonl")


def setup_only(cfg) -> Trainer:
    """A Trainer loaded up to its first step (model, lineage), then closed."""
    trainer = Trainer(cfg, quiet=True)
    trainer._setup(resume=False)
    trainer.stage.close()
    trainer.sink.close()
    return trainer


def weights(path) -> dict[str, torch.Tensor]:
    return load_model(str(path)).state_dict()


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of a's tensors that b holds with other values (b may hold more: a checkpoint omits tied weights)."""
    assert a.keys() <= b.keys(), sorted(a.keys() - b.keys())[:3]
    return [n for n in a if not torch.equal(a[n], b[n])]


# --- 1. unknown variant names are refused, listing the valid ones ------------------------------

REFUSALS = [
    ("algorithm.name", "ppo", STAGES),
    ("algorithm.advantage", "gae", ADVANTAGES),
    ("algorithm.loss_aggregation", "sum", AGGREGATIONS),
    ("algorithm.kl_estimator", "k2", KL_ESTIMATORS),
    ("dpo.loss", "hinge", LOSSES),
    ("asft.baseline", "median", BASELINES),
]


def listed_names(message: str, key: str) -> set[str]:
    """The names after `valid:` in the message's row for `key` (whitespace-insensitive: rich wraps lines)."""
    text = " ".join(message.split())
    found = re.search(re.escape(key) + r": [^:]*?; valid: (.*?) \(got", text)
    assert found, f"no valid-names list for {key} in: {text}"
    return set(found.group(1).split(", "))


@pytest.mark.parametrize("key, bad, table", REFUSALS, ids=[k for k, _, _ in REFUSALS])
def test_unknown_variant_name_is_a_config_error_listing_the_valid_ones(key, bad, table):
    with pytest.raises(ConfigError) as err:
        load_config(EXAMPLES / "grpo.yaml", [f"{key}={bad}"])
    assert repr(bad) in str(err.value)
    assert listed_names(str(err.value), key) == set(table)


def test_cli_exits_2_listing_the_valid_names_of_every_bad_variant():
    proc = run_cli("train", str(EXAMPLES / "grpo.yaml"), *[f"{key}={bad}" for key, bad, _ in REFUSALS])
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for key, _, table in REFUSALS:
        assert listed_names(proc.stderr, key) == set(table), key


# --- 2. dynamic sampling ------------------------------------------------------------------------


def test_dynamic_sampling_refills_to_prompts_per_step(tmp_path, toy_model_dir, graders):
    wanted, rounds = 4, 8
    cfg = grpo_config(toy_model_dir, tmp_path / "run", *graders["coin"], "train.steps=3", f"train.prompts_per_step={wanted}",
                      "algorithm.dynamic_sampling=true", f"algorithm.max_refill_rounds={rounds}")
    _, rows = train(cfg)
    assert len(rows) == 3
    for r in rows:
        kept, generated, refills = r["dynamic/groups_kept"], r["dynamic/groups_generated"], r["dynamic/refill_rounds"]
        # reward metrics are over every generated group: the informative ones among them are what could be kept
        informative = round(generated * (1 - r["critic/frac_zero_std_groups"]))
        assert kept == min(wanted, informative), r
        assert generated >= wanted + refills and generated >= kept, r  # each refill round generates at least one prompt
        assert refills <= rounds
        if refills < rounds:  # refilling stops early only once the batch is full
            assert kept == wanted, r
        assert r["actor/grad_norm"] > 0, r
    assert any(r["dynamic/refill_rounds"] >= 1 and r["dynamic/groups_kept"] == wanted for r in rows), rows


def test_dynamic_sampling_with_no_informative_group_skips_the_update(tmp_path, toy_model_dir, graders):
    # Every group all-equal: the step generates 1 + max_refill_rounds rounds, trains on nothing, and still
    # logs. With KL as a reward penalty no KL is measured on such a step (null, not a stale or crashing value).
    cfg = grpo_config(toy_model_dir, tmp_path / "run", *graders["constant"], "train.steps=1",
                      "algorithm.dynamic_sampling=true", "algorithm.max_refill_rounds=2",
                      "algorithm.beta=0.1", "algorithm.kl_in=reward")
    trainer, rows = train(cfg)
    (r,) = rows
    assert (r["dynamic/groups_kept"], r["dynamic/refill_rounds"], r["dynamic/groups_generated"]) == (0, 2, 6)
    assert r["critic/frac_zero_std_groups"] == 1.0 and r["critic/rewards/mean"] == 1.0
    assert r["actor/grad_norm"] == 0.0 and r["actor/pg_loss"] == 0.0
    assert r["actor/kl"] is None
    assert not differing(weights(toy_model_dir), weights(trainer.run_dir / "final"))


# --- 3. mu > 1 ------------------------------------------------------------------------------------


def test_mu_3_ratios_depart_from_1_and_clip_while_mu_1_never_clips(tmp_path, toy_model_dir, graders):
    common = [*graders["coin"], "train.steps=1", "train.prompts_per_step=4", "train.lr=5e-2", "algorithm.epsilon=0.02"]
    _, mu3 = train(grpo_config(toy_model_dir, tmp_path / "mu3", *common, "algorithm.updates_per_batch=3"))
    _, mu1 = train(grpo_config(toy_model_dir, tmp_path / "mu1", *common, "algorithm.updates_per_batch=1"))
    # mu = 1 trained on non-zero advantages (so it could have clipped), and never clipped
    assert mu1[0]["actor/grad_norm"] > 0, mu1
    assert [r["actor/clipfrac"] for r in mu1] == [0.0]
    assert any(r["actor/clipfrac"] > 0 for r in mu3), mu3
    assert all(0 <= r["actor/clipfrac"] <= 1 for r in mu3)


# --- 4. KL as a reward penalty or a loss term --------------------------------------------------------


@pytest.mark.parametrize("kl_in", ["reward", "loss"])
def test_kl_k1_is_zero_before_the_first_update_and_not_after(tmp_path, toy_model_dir, graders, kl_in):
    # temperature != 1: the policy's and the reference's log-probs must both be of logits / temperature
    _, rows = train(grpo_config(toy_model_dir, tmp_path / "run", *graders["coin"], "algorithm.beta=0.1",
                                f"algorithm.kl_in={kl_in}", "algorithm.kl_estimator=k1", "rollout.temperature=0.7"))
    assert all(r["actor/kl"] is not None and math.isfinite(r["actor/kl"]) for r in rows), rows
    assert rows[0]["actor/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at step 1
    assert rows[0]["actor/grad_norm"] > 0
    assert abs(rows[1]["actor/kl"]) > 1e-4, rows  # the policy moved away from the reference


# --- 5. overlong penalty -------------------------------------------------------------------------------


def test_overlong_penalty_lowers_shaped_rewards_by_length(tmp_path, toy_model_dir, graders):
    seen = StepResults()
    trainer, rows = train(grpo_config(toy_model_dir, tmp_path / "run", *graders["coin"], "train.steps=1",
                                      "algorithm.overlong_buffer=4"), callbacks=[seen])
    completions = [c for g in seen.results[1].groups for c in g.completions]
    lengths = [len(c.token_ids) for c in completions]
    rewards = [c.score.reward for c in completions]
    # max_new_tokens 8, buffer 4: no penalty up to 4 tokens, then -1/4 per token, -1 at 8
    expected = sum(r - min(max(length - 4, 0) / 4, 1.0) for r, length in zip(rewards, lengths)) / len(rewards)
    (r,) = rows
    assert r["critic/rewards/mean"] == pytest.approx(sum(rewards) / len(rewards))
    assert r["critic/shaped_rewards/mean"] == pytest.approx(expected, abs=1e-6)
    assert any(length > 4 for length in lengths), lengths  # the random toy model seldom stops early
    assert r["critic/shaped_rewards/mean"] < r["critic/rewards/mean"]


def test_shaped_rewards_by_hand():
    # max_new_tokens 8, buffer 4, penalty 0.5: lengths 2, 5, 6, 8 -> penalties 0, -0.125, -0.25, -0.5.
    # A failed grading stays NaN; the Score's reward is untouched.
    cfg = load_config(None, ["rollout.max_new_tokens=8", "algorithm.overlong_buffer=4", "algorithm.overlong_penalty=0.5"])
    stage = GRPOStage(cfg)
    rewards = [1.0, 1.0, 0.0, None]
    completions = [Completion("", [5] * n, [], "stop", Score(reward=r)) for n, r in zip((2, 5, 6, 8), rewards)]
    group = Group(Item("q", [{"role": "user", "content": "?"}]), [1], completions)
    shaped, kl = stage.shaped_rewards([group])
    assert kl is None  # no KL reward penalty configured
    assert_close(shaped, torch.tensor([[1.0, 0.875, -0.25, float("nan")]]), equal_nan=True)
    assert [c.score.reward for c in completions] == rewards


# --- 7. init_from and lineage ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, toy_model_dir, graders):
    """2 GRPO steps on the toy model with a checkpoint after each."""
    run = tmp_path_factory.mktemp("chain") / "a"
    train(grpo_config(toy_model_dir, run, *graders["coin"], "run.checkpoint_interval=1"))
    return run


def test_init_from_a_run_starts_from_its_final_model(tmp_path, toy_model_dir, run_a):
    final = weights(run_a / "final")
    assert differing(weights(toy_model_dir), final)  # A trained: starting from it is not starting from the toy model
    trainer = setup_only(grpo_config(toy_model_dir, tmp_path / "b", f"init_from={run_a}"))
    assert trainer.model_path == str(run_a / "final")
    assert not differing(final, trainer.policy.module.state_dict())
    assert not (tmp_path / "b" / "init").exists()  # a final model is loaded as it is, not copied


def test_init_from_a_checkpoint_rebuilds_it_and_chains_lineage(tmp_path, toy_model_dir, graders, run_a):
    ckpt = run_a / "checkpoints" / "step-000001"
    saved = load_file(ckpt / "weights.safetensors")
    assert differing(saved, weights(run_a / "final"))  # step 1 is not the final model
    b, c = tmp_path / "b", tmp_path / "c"
    train(grpo_config(toy_model_dir, b, *graders["coin"], f"init_from={ckpt}", "train.steps=1"))
    rebuilt = weights(b / "init")
    assert not differing(saved, rebuilt)

    sft = EXAMPLES.parent / "sft"
    trainer = setup_only(grpo_config(toy_model_dir, c, f"init_from={b}", "algorithm.name=sft",
                                     f"data.train={sft / 'train.jsonl'}", f"data.val={sft / 'val.jsonl'}"))
    assert not differing(weights(b / "final"), trainer.policy.module.state_dict())
    lineage = read_lineage(c)
    assert [e["run_dir"] for e in lineage] == [str(p.resolve()) for p in (run_a, b, c)]
    assert [e["algorithm"] for e in lineage] == ["grpo", "grpo", "sft"]
    assert [e["checkpoint"] for e in lineage] == [None, "step-000001", "final"]
    assert [e["init_from"] for e in lineage] == [None, str(ckpt.resolve()), str((b / "final").resolve())]
    assert [e["model_path"] for e in lineage] == [str(toy_model_dir), str(b / "init"), str(b / "final")]
    assert read_lineage(b) == lineage[:2] and read_lineage(run_a) == lineage[:1]


def test_init_from_what_is_not_a_model_says_what_exists(tmp_path, toy_model_dir, run_a):
    (tmp_path / "plain").mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run_a / "config.yaml").read_text())
    cases = [
        (tmp_path / "plain", "not a run directory"),
        (run_a / "checkpoints" / "step-000009", "no such checkpoint; the run has step-000001, step-000002"),
        (unfinished, "no final/ model"),
    ]
    for source, message in cases:
        run = tmp_path / f"b-{source.name}"
        with pytest.raises(UserError, match=re.escape(message)):
            Trainer(grpo_config(toy_model_dir, run, f"init_from={source}"), quiet=True).train()
        assert not run.exists()  # refused before the run directory is made


def test_init_from_a_lora_checkpoint_merges_the_adapter(tmp_path, toy_model_dir, graders):
    # The rebuilt model is the base weight plus (alpha / rank) * B @ A on every adapted layer, the rest unchanged.
    a, b = tmp_path / "a", tmp_path / "b"
    train(grpo_config(toy_model_dir, a, *graders["coin"], "train.steps=1", "run.checkpoint_interval=1",
                      "lora.enabled=true", "lora.rank=4", "lora.alpha=8"))
    adapter = load_file(a / "checkpoints" / "step-000001" / "weights.safetensors")
    trainer = setup_only(grpo_config(toy_model_dir, b, f"init_from={a / 'checkpoints' / 'step-000001'}"))
    assert not (b / "init" / "adapter_config.json").exists()
    base, rebuilt = weights(toy_model_dir), weights(b / "init")
    expected = dict(base)
    for key in adapter:
        if ".lora_A." in key:
            module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            lora_a, lora_b = adapter[key], adapter[key.replace(".lora_A.", ".lora_B.")]
            expected[f"{module}.weight"] = base[f"{module}.weight"] + (8 / 4) * lora_b @ lora_a
    changed = differing(base, expected)
    assert changed, "the adapter did not train: the test would not tell a merged model from the base"
    for name in expected:
        assert_close(rebuilt[name], expected[name], msg=name)
    assert not differing(rebuilt, trainer.policy.module.state_dict())
    assert read_lineage(b)[-1]["checkpoint"] == "step-000001"


def test_a_reward_model_run_cannot_start_a_policy_run(tmp_path, toy_model_dir):
    from rftkit.train.lineage import InitSource, check_compatible

    run = tmp_path / "rm"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(None, ["algorithm.name=reward_model"]).to_yaml())
    src = InitSource(run, "final", run / "final")
    check_compatible(src, "reward_model")  # a reward model may continue a reward model
    with pytest.raises(UserError, match="reward model"):
        check_compatible(src, "grpo")
    (run / "config.yaml").write_text(load_config(None, ["algorithm.name=sft"]).to_yaml())
    check_compatible(src, "reward_model")  # a language model may seed a reward model (new score head)
