"""Our loss and advantage functions against Hugging Face TRL's, on identical random inputs.

Checked against TRL 1.16.0 (pinned in the `test` extra). TRL's maths lives inside trainer
methods, so each is called unbound on a stand-in `self` (a SimpleNamespace carrying only the
attributes the method reads, with a one-process accelerator whose gather/reduce are the
identity) and stand-in models that return given log-probs. No TRL line is copied here; if a
TRL upgrade breaks a stand-in, re-read the method and update both the stand-in and the mapping.

Mapping (ours <-> TRL):
- clipped_policy_loss, epsilon / epsilon_high <-> GRPOTrainer._compute_loss, epsilon / epsilon_high
  (loss_type grpo/bnpo/dr_grpo/dapo; importance_sampling_level="token").
- Aggregations: token_mean <-> "dapo" (normaliser: the whole generation batch's token count,
  num_items_in_batch, so micro-batches add up) and <-> "bnpo" only for one micro-batch ("bnpo"
  divides by each micro-batch's own token count); sequence_mean <-> "grpo"; constant <-> "dr_grpo"
  (max_new_tokens <-> max_completion_length).
- KL as a loss term, k3 <-> GRPO's beta term (Schulman k3, added per token before aggregation).
- Advantages: group_mean_std <-> scale_rewards="group"; group_mean <-> scale_rewards="none".
  batch_normalized is NOT TRL's scale_rewards="batch": TRL divides the group-centred rewards by
  the std of the raw rewards over the batch, ours by the std of the group-centred values
  (see test_batch_normalized_differs_from_trl_batch_scaling).
- KL as a reward penalty, k1 summed per sequence, then rloo <-> RLOOTrainer's advantages with beta.
- overlong_penalty <-> trl.rewards.get_soft_overlong_punishment.
- dpo_loss sigmoid <-> DPOTrainer loss_type="sigmoid" (label_smoothing 0: TRL 1.x's sigmoid ignores
  it); sigmoid with label_smoothing (cDPO) <-> loss_type="aot" on one pair (sorting one pair is the
  identity, and aot is then the cDPO formula); ipo <-> "ipo" with our per-token average log-probs.
- bradley_terry_loss / preference_accuracy <-> RewardTrainer.compute_loss (with and without margin).
- kl_baseline + kto_loss <-> KTOTrainer._compute_loss, loss_type="kto", precomputed reference log-probs
  (precompute_ref_logps) and the KL term on (calculate_KL): the batch's mismatched KL pairs are TRL's
  KL_input_ids; per-example losses are read from TRL by batches of one example with the same KL pairs.
"""

import math
import types
from collections import defaultdict

import pytest
import torch
import trl
from torch.testing import assert_close
from trl import DPOTrainer, GRPOTrainer, KTOTrainer, RewardTrainer, RLOOTrainer
from trl.rewards import get_soft_overlong_punishment

from rftkit.algorithms.dpo import LOSSES, dpo_loss, sequence_logps
from rftkit.algorithms.grpo import (
    AGGREGATIONS,
    StepCounts,
    batch_normalized,
    clipped_policy_loss,
    group_mean,
    group_mean_std,
    kl_k1,
    kl_reward_penalty,
    overlong_penalty,
    rloo,
)
from rftkit.algorithms.kto import kl_baseline, kto_loss
from rftkit.algorithms.reward_model import bradley_terry_loss, preference_accuracy

TRL_VERSION = "1.16.0"
NAN = float("nan")


def test_trl_is_the_version_the_mapping_was_checked_against():
    assert trl.__version__ == TRL_VERSION, (
        f"these parity tests were written against TRL {TRL_VERSION} (got {trl.__version__}): "
        "re-check the stand-ins and the mapping in this module's docstring, then update TRL_VERSION"
    )


# --- stand-ins ----------------------------------------------------------------------------------


def _accelerator():
    identity = lambda t, *a, **k: t  # noqa: E731 - one process: gather and reduce change nothing
    return types.SimpleNamespace(
        device=torch.device("cpu"), num_processes=1, process_index=0, is_main_process=True,
        gather=identity, gather_for_metrics=identity, reduce=identity,
    )


def _trainer(**attrs):
    """A stand-in `self`: the attributes every TRL trainer method below reads, plus `attrs`."""
    base = dict(
        accelerator=_accelerator(),
        model=types.SimpleNamespace(training=True, is_gradient_checkpointing=False),
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
    )
    return types.SimpleNamespace(**{**base, **attrs})


def _random_step(batch=6, width=7, seed=0):
    """Random per-token log-probs and a right-padded completion mask, as TRL lays them out."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (batch,), generator=g)
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()  # [B, T]
    logp = (torch.randn(batch, width, generator=g) * 0.5 - 1.0).requires_grad_()
    old = logp.detach() + 0.4 * torch.randn(batch, width, generator=g)  # mu > 1: ratios spread around 1
    ref = logp.detach() + 0.2 * torch.randn(batch, width, generator=g)
    adv = torch.randn(batch, generator=g)
    # row 0 gains (A > 0) and its first token has ratio 1.25: clipped by epsilon 0.2, not by epsilon_high 0.28
    adv[0] = adv[0].abs() + 0.5
    old[0, 0] = logp[0, 0].detach() - math.log(1.25)
    return logp, old, ref, adv, mask


def trl_grpo_loss(loss_type, logp, old, adv, mask, epsilon, epsilon_high=None, beta=0.0, ref=None,
                  max_completion_length=None, num_items_in_batch=None, accumulation_steps=1):
    """GRPOTrainer._compute_loss on one micro-batch; returns (loss, metrics)."""
    batch, width = logp.shape
    fake = _trainer(
        # the model forward is replaced by the given log-probs (entropy unused here)
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
        loss_type=loss_type, beta=beta,
        # GRPOTrainer.__init__: epsilon_low = epsilon; epsilon_high = epsilon_high or epsilon
        epsilon_low=epsilon, epsilon_high=epsilon if epsilon_high is None else epsilon_high,
        args=types.SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=accumulation_steps),
        current_gradient_accumulation_steps=accumulation_steps,
        max_completion_length=max_completion_length or width,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        use_vllm=False, _entropy_bonus_enabled=False, aux_loss_enabled=False,
    )
    inputs = {
        "prompt_ids": torch.ones(batch, 1, dtype=torch.long),
        "prompt_mask": torch.ones(batch, 1, dtype=torch.long),
        "completion_ids": torch.ones(batch, width, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": adv,
        "old_per_token_logps": old,
        "num_items_in_batch": torch.tensor(float(num_items_in_batch if num_items_in_batch is not None else mask.sum())),
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    return GRPOTrainer._compute_loss(fake, None, inputs), fake._metrics["train"]


def ours_grpo_loss(aggregation, logp, old, adv, mask, epsilon, epsilon_high=None, beta=0.0, ref=None, counts=None):
    counts = counts or StepCounts(tokens=mask.sum().item(), rows=logp.shape[0], max_new_tokens=logp.shape[1])
    aggregate = lambda values, m: AGGREGATIONS[aggregation](values, m, counts)  # noqa: E731
    return clipped_policy_loss(logp, old, adv, mask, epsilon, aggregate, ref, beta, epsilon_high=epsilon_high)


# --- GRPO loss ----------------------------------------------------------------------------------

MAPPING = [("token_mean", "bnpo"), ("token_mean", "dapo"), ("sequence_mean", "grpo"), ("constant", "dr_grpo")]


@pytest.mark.parametrize("ours,theirs", MAPPING)
@pytest.mark.parametrize("epsilon_high", [None, 0.28])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_gradient_and_metrics_match_trl(ours, theirs, epsilon_high, beta):
    logp, old, ref, adv, mask = _random_step(seed=MAPPING.index((ours, theirs)) + 10 * bool(epsilon_high) + 100 * bool(beta))
    ref = ref if beta else None
    trl_loss, metrics = trl_grpo_loss(theirs, logp, old, adv, mask, 0.2, epsilon_high, beta, ref)
    (trl_grad,) = torch.autograd.grad(trl_loss, logp)
    parts = ours_grpo_loss(ours, logp, old, adv, mask, 0.2, epsilon_high, beta, ref)
    (grad,) = torch.autograd.grad(parts.loss, logp)
    assert_close(parts.loss, trl_loss)
    assert_close(grad, trl_grad)
    # clip fraction and mean KL: ours are sums over tokens, TRL logs token means
    assert metrics["clip_ratio/region_mean"][0] > 0, "inputs should make clipping engage"
    if epsilon_high is not None:
        symmetric = ours_grpo_loss(ours, logp, old, adv, mask, 0.2, None, beta, ref).loss
        assert not torch.allclose(parts.loss, symmetric), "inputs should have ratios between 1.2 and 1.28"
    assert parts.clipped.item() / mask.sum().item() == pytest.approx(metrics["clip_ratio/region_mean"][0])
    if beta:
        assert parts.kl.item() / mask.sum().item() == pytest.approx(metrics["kl"][0], rel=1e-5)


@pytest.mark.parametrize("ours,theirs", [("token_mean", "dapo"), ("sequence_mean", "grpo"), ("constant", "dr_grpo")])
def test_grpo_micro_batches_match_trl_gradient_accumulation(ours, theirs):
    # one step of 6 rows in 2 micro-batches of 3 = TRL with gradient_accumulation_steps = steps_per_generation = 2
    logp, old, _, adv, mask = _random_step(seed=3)
    counts = StepCounts(tokens=mask.sum().item(), rows=6, max_new_tokens=7)
    ours_total = sum(ours_grpo_loss(ours, logp[s], old[s], adv[s], mask[s], 0.2, 0.28, counts=counts).loss
                     for s in (slice(0, 3), slice(3, 6)))
    theirs_total = sum(trl_grpo_loss(theirs, logp[s], old[s], adv[s], mask[s], 0.2, 0.28, num_items_in_batch=mask.sum(),
                                     accumulation_steps=2)[0] for s in (slice(0, 3), slice(3, 6)))
    assert_close(ours_total, theirs_total)


def test_bnpo_is_token_mean_only_for_a_single_micro_batch():
    # bnpo divides each micro-batch by its own token count: with unequal counts it is not token_mean
    logp, old, _, adv, mask = _random_step(seed=3)
    first, second = mask[:3].sum().item(), mask[3:].sum().item()
    assert first != second
    bnpo = sum(trl_grpo_loss("bnpo", logp[s], old[s], adv[s], mask[s], 0.2, accumulation_steps=2)[0]
               for s in (slice(0, 3), slice(3, 6)))
    token_mean = ours_grpo_loss("token_mean", logp, old, adv, mask, 0.2).loss
    assert not torch.allclose(bnpo, token_mean)


# --- GRPO advantages ------------------------------------------------------------------------------


def trl_grpo_advantages(rewards, num_generations, scale_rewards):
    """GRPOTrainer._generate_and_score_completions with generation and reward functions stubbed. rewards: [B]."""
    batch = rewards.numel()
    fake = _trainer(
        environment_factories=None, tools=None, environments=None,
        # (prompt ids, completion ids, tool mask, completions, sampling logprobs, extra fields, images, tool images)
        _generate=lambda prompts: ([[1]] * batch, [[2, 3]] * batch, None, ["c"] * batch, None, {}, None, None),
        _calculate_rewards=lambda inputs, prompts, completions, ids: rewards[:, None].clone(),  # one reward function
        _tokenizer=types.SimpleNamespace(pad_token_id=0), pad_to_multiple_of=None, mask_truncated_completions=False,
        args=types.SimpleNamespace(per_device_train_batch_size=batch, steps_per_generation=1, gradient_accumulation_steps=1,
                                   gradient_checkpointing_kwargs=None),
        num_iterations=1, use_vllm=False, beta=0.0, num_generations=num_generations,
        multi_objective_aggregation="sum_then_normalize", reward_weights=torch.ones(1), reward_func_names=["r"],
        scale_rewards=scale_rewards, log_multimodal=False, _pending_extra_logs={}, _pending_metrics={},
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [], "extra": defaultdict(list)},
    )
    return GRPOTrainer._generate_and_score_completions(fake, [{"prompt": "p"}] * batch)["advantages"]


def _random_rewards(groups=5, n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(groups, n, generator=g)
    rewards[1] = 1.0  # no spread: advantage 0
    rewards[2, 1] = NAN  # failed grading
    rewards[3, :3] = NAN  # one valid reward left: no baseline
    rewards[4] = torch.tensor([1.0, 0.0, 0.0, 1.0])  # binary rewards
    return rewards


@pytest.mark.parametrize("ours,scale_rewards", [(group_mean_std, "group"), (group_mean, "none")])
def test_group_advantages_match_trl(ours, scale_rewards):
    rewards = _random_rewards()
    theirs = trl_grpo_advantages(rewards.flatten(), 4, scale_rewards)
    assert_close(ours(rewards).flatten(), theirs)


def test_batch_normalized_differs_from_trl_batch_scaling():
    # both centre within groups and divide by one batch-wide std (+1e-4); TRL's std is of the raw rewards,
    # ours of the centred values (REINFORCE++-baseline). Undo each division: the centred rewards agree.
    rewards = _random_rewards()
    valid = ~torch.isnan(rewards)
    theirs = trl_grpo_advantages(rewards.flatten(), 4, "batch").view(5, 4)
    ours = batch_normalized(rewards)
    assert not torch.allclose(ours, theirs)
    centred = group_mean(rewards)
    assert_close(theirs * (rewards[valid].std() + 1e-4), centred)
    assert_close(ours * (centred[valid].std() + 1e-4), centred)


# --- KL as a reward penalty, RLOO -------------------------------------------------------------------


def trl_rloo_advantages(rewards, old, ref, mask, beta, num_generations):
    """RLOOTrainer._generate_and_score_completions with generation, forwards and rewards stubbed. rewards: [B]."""
    batch = rewards.numel()
    lengths = mask.sum(-1).long().tolist()
    model, ref_model = types.SimpleNamespace(training=True, is_gradient_checkpointing=False), object()
    fake = _trainer(
        model=model, ref_model=ref_model,
        _generate=lambda prompts: ([[1]] * batch, [[2] * n for n in lengths], ["c"] * batch),
        # the policy's forward gives the sampling-time log-probs, the reference's the reference's
        _get_per_token_logps_and_entropies=lambda m, *a, **k: (old if m is model else ref, None, None),
        _calculate_rewards=lambda inputs, prompts, completions, ids: rewards[:, None].clone(),
        _tokenizer=types.SimpleNamespace(pad_token_id=0), pad_to_multiple_of=None, mask_truncated_completions=False,
        args=types.SimpleNamespace(per_device_train_batch_size=batch, gradient_checkpointing_kwargs=None),
        beta=beta, num_generations=num_generations, reward_weights=torch.ones(1), reward_func_names=["r"],
        reward_clip_range=None, normalize_advantages=False, log_multimodal=False, _pending_extra_logs={}, _pending_metrics={},
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [], "extra": defaultdict(list)},
    )
    return RLOOTrainer._generate_and_score_completions(fake, [{"prompt": "p"}] * batch)["advantages"]


@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_k1_reward_penalty_then_rloo_matches_trl_rloo(beta):
    rewards = _random_rewards(seed=1)  # [5, 4]
    _, old, ref, _, mask = _random_step(batch=20, width=6, seed=4)
    penalised = kl_reward_penalty(rewards, old.view(5, 4, 6), ref.view(5, 4, 6), mask.view(5, 4, 6), beta, kl_k1)
    theirs = trl_rloo_advantages(rewards.flatten(), old, ref, mask, beta, 4)
    assert_close(rloo(penalised).flatten(), theirs)


# --- DAPO overlong penalty ------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [0, 5, 16])
def test_overlong_penalty_matches_trl(cache):
    lengths = torch.randint(1, 45, (50,), generator=torch.Generator().manual_seed(cache))
    theirs = get_soft_overlong_punishment(max_completion_len=32, soft_punish_cache=cache)([[7] * n for n in lengths.tolist()])
    assert_close(overlong_penalty(lengths, 32, cache), torch.tensor(theirs))


# --- DPO ---------------------------------------------------------------------------------------------


def trl_dpo_loss(loss_type, token_logps, completion_mask, ref_chosen, ref_rejected, beta, label_smoothing=0.0):
    """DPOTrainer._compute_loss with precomputed reference log-probs; the model returns the given token log-probs.

    token_logps: [2B, T-1] log-probs of tokens 1..T-1, rows [chosen..., rejected...]; completion_mask: [2B, T].
    Returns (loss, metrics).
    """
    pairs = token_logps.shape[0]

    def model(labels, **kwargs):
        # TRL's fused LM head: per-token log-probs of the shifted labels, 0 where the label is -100
        keep = labels[:, 1:] != -100
        zeros = torch.zeros_like(token_logps)
        return types.SimpleNamespace(log_probs=token_logps.masked_fill(~keep, 0.0), entropy=zeros, mean_logits=zeros,
                                     is_top1=zeros.bool())

    fake = _trainer(
        loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
        f_divergence_type="reverse_kl", precompute_ref_logps=True, ld_alpha=None, use_weighting=False,
        aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1, args=types.SimpleNamespace(),
    )
    inputs = {
        "input_ids": torch.ones(pairs, completion_mask.shape[1], dtype=torch.long),
        "attention_mask": torch.ones(pairs, completion_mask.shape[1], dtype=torch.long),
        "completion_mask": completion_mask.long(),
        "ref_chosen_logps": ref_chosen,
        "ref_rejected_logps": ref_rejected,
    }
    return DPOTrainer._compute_loss(fake, model, inputs, return_outputs=False), fake._metrics["train"]


def _random_pairs(pairs=4, width=8, seed=0):
    """Token log-probs of [chosen..., rejected...] answers after a 2-token prompt, and reference token log-probs."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width - 1, (2 * pairs,), generator=g)
    completion_mask = ((torch.arange(width)[None, :] >= 2) & (torch.arange(width)[None, :] < 2 + lengths[:, None])).float()
    token_logps = (torch.randn(2 * pairs, width - 1, generator=g) - 1.5).requires_grad_()
    ref_tokens = token_logps.detach() + 0.5 * torch.randn(2 * pairs, width - 1, generator=g)
    return token_logps, ref_tokens, completion_mask


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_dpo_loss_gradient_and_rewards_match_trl(loss_type):
    token_logps, ref_tokens, completion_mask = _random_pairs(seed=len(loss_type))
    mask = completion_mask[:, 1:]  # the answer mask over token log-probs 1..T-1
    pairs = token_logps.shape[0] // 2
    # TRL takes summed reference log-probs and (for ipo) divides the log-ratios by the answer length itself
    ref_sums = sequence_logps(ref_tokens, mask)
    trl_loss, metrics = trl_dpo_loss(loss_type, token_logps, completion_mask, ref_sums[:pairs], ref_sums[pairs:], beta=0.1)
    (trl_grad,) = torch.autograd.grad(trl_loss, token_logps)

    average = LOSSES[loss_type].average_logps
    policy, ref = sequence_logps(token_logps, mask, average), sequence_logps(ref_tokens, mask, average)
    loss, chosen_rewards, rejected_rewards = dpo_loss(policy[:pairs], policy[pairs:], ref[:pairs], ref[pairs:], 0.1, loss_type)
    (grad,) = torch.autograd.grad(loss, token_logps)
    assert_close(loss, trl_loss)
    assert_close(grad, trl_grad)
    # TRL logs beta * summed log-ratios as rewards for every loss type; ours are beta * the log-ratios the
    # loss used, per-token averages for ipo: times the answer lengths they are TRL's
    lengths = mask.sum(-1) if average else torch.ones(2 * pairs)
    assert chosen_rewards.mul(lengths[:pairs]).mean().item() == pytest.approx(metrics["rewards/chosen"][0], rel=1e-5)
    assert rejected_rewards.mul(lengths[pairs:]).mean().item() == pytest.approx(metrics["rewards/rejected"][0], rel=1e-5)


@pytest.mark.parametrize("label_smoothing", [0.1, 0.3])
def test_dpo_label_smoothing_matches_trl_aot_on_single_pairs(label_smoothing):
    # TRL 1.16's "sigmoid" ignores label_smoothing; "aot" sorts the batch's log-ratios and then applies the
    # cDPO formula, so on one pair at a time it is exactly conservative DPO
    token_logps, ref_tokens, completion_mask = _random_pairs(pairs=3, seed=7)
    mask = completion_mask[:, 1:]
    for i in range(3):
        rows = [i, 3 + i]
        tok, msk = token_logps[rows], mask[rows]
        ref = sequence_logps(ref_tokens[rows], msk)
        trl_loss, _ = trl_dpo_loss("aot", tok, completion_mask[rows], ref[:1], ref[1:], beta=0.2, label_smoothing=label_smoothing)
        pol = sequence_logps(tok, msk)
        loss, _, _ = dpo_loss(pol[:1], pol[1:], ref[:1], ref[1:], 0.2, "sigmoid", label_smoothing)
        assert_close(loss, trl_loss)


def test_trl_sigmoid_ignores_label_smoothing():
    # documents the mismatch above: TRL's sigmoid equals our label_smoothing = 0
    token_logps, ref_tokens, completion_mask = _random_pairs(seed=5)
    mask, pairs = completion_mask[:, 1:], token_logps.shape[0] // 2
    ref = sequence_logps(ref_tokens, mask)
    trl_loss, _ = trl_dpo_loss("sigmoid", token_logps, completion_mask, ref[:pairs], ref[pairs:], 0.1, label_smoothing=0.2)
    pol = sequence_logps(token_logps, mask)
    assert_close(dpo_loss(pol[:pairs], pol[pairs:], ref[:pairs], ref[pairs:], 0.1, "sigmoid", 0.0)[0], trl_loss)


# --- reward model --------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_margin", [False, True])
def test_bradley_terry_loss_and_accuracy_match_trl(with_margin):
    g = torch.Generator().manual_seed(int(with_margin))
    scores = torch.randn(16, 1, generator=g).requires_grad_()  # [chosen x 8, rejected x 8]
    margin = torch.rand(8, generator=g) if with_margin else None
    fake = _trainer(_total_train_tokens=0, _tp_size=1, args=types.SimpleNamespace(center_rewards_coefficient=None))
    inputs = {"input_ids": torch.ones(16, 3, dtype=torch.long), "attention_mask": torch.ones(16, 3, dtype=torch.long)}
    if with_margin:
        inputs["margin"] = margin
    trl_loss = RewardTrainer.compute_loss(fake, lambda **kw: types.SimpleNamespace(logits=scores), inputs)
    (trl_grad,) = torch.autograd.grad(trl_loss, scores)
    loss = bradley_terry_loss(scores[:8, 0], scores[8:, 0], margin)
    (grad,) = torch.autograd.grad(loss, scores)
    assert_close(loss, trl_loss)
    assert_close(grad, trl_grad)
    assert preference_accuracy(scores[:8, 0], scores[8:, 0]).item() == pytest.approx(fake._metrics["train"]["accuracy"][0])


# --- KTO ---------------------------------------------------------------------------------------------


def trl_kto_loss(token_logps, completion_mask, labels, ref_logps, kl_token_logps, kl_completion_mask, ref_kl_logps,
                 beta, desirable_weight, undesirable_weight):
    """KTOTrainer._compute_loss (loss_type "kto") with precomputed reference log-probs; the model returns given log-probs.

    token_logps: [B, T-1] log-probs of tokens 1..T-1 of the (prompt, completion) rows, completion_mask [B, T],
    labels [B] bool, ref_logps [B] summed; kl_*: the same for the K mismatched KL rows. Returns (loss, metrics).
    """
    def model(input_ids, labels, **kwargs):
        given = kl_token_logps if int(input_ids[0, 0]) == 2 else token_logps  # KL rows' ids are 2s, the others 1s
        keep = labels[:, 1:] != -100  # TRL's fused LM head: 0 where the label is -100
        zeros = torch.zeros_like(given)
        return types.SimpleNamespace(log_probs=given.masked_fill(~keep, 0.0), entropy=zeros, mean_logits=zeros)

    fake = _trainer(loss_type="kto", beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight,
                    calculate_KL=True, precompute_ref_logps=True, aux_loss_enabled=False, _total_train_tokens=0, _tp_size=1)
    fake._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(fake, m, batch)
    ones = lambda mask, fill: torch.full(mask.shape, fill, dtype=torch.long)  # noqa: E731
    inputs = {
        "input_ids": ones(completion_mask, 1), "attention_mask": ones(completion_mask, 1),
        "completion_mask": completion_mask.long(),
        "KL_input_ids": ones(kl_completion_mask, 2), "KL_attention_mask": ones(kl_completion_mask, 1),
        "KL_completion_mask": kl_completion_mask.long(),
        "label": labels, "ref_logps": ref_logps, "ref_KL_logps": ref_kl_logps,
    }
    return KTOTrainer._compute_loss(fake, model, inputs, return_outputs=False), fake._metrics["train"]


def _random_unpaired(n=7, width=8, kl_shift=0.0, seed=0):
    """Rows of unpaired examples after a 2-token prompt (both labels), their mismatched KL rows, and reference sums.

    The KL rows' reference log-probs are the policy's shifted by `kl_shift` per row (plus noise): a positive
    shift makes the KL estimate positive, a negative one makes TRL and us clamp it to 0.
    """
    g = torch.Generator().manual_seed(seed)

    def rows(k):
        lengths = torch.randint(1, width - 1, (k,), generator=g)
        positions = torch.arange(width)[None, :]
        mask = ((positions >= 2) & (positions < 2 + lengths[:, None])).float()  # [k, T]
        return (torch.randn(k, width - 1, generator=g) - 1.5), mask

    token_logps, completion_mask = rows(n)
    token_logps.requires_grad_()
    labels = torch.rand(n, generator=g) < 0.5
    labels[0], labels[1] = True, False
    ref_logps = sequence_logps(token_logps.detach(), completion_mask[:, 1:]) + torch.randn(n, generator=g)
    kl_token_logps, kl_mask = rows(n)
    ref_kl = sequence_logps(kl_token_logps, kl_mask[:, 1:]) - kl_shift + 0.1 * torch.randn(n, generator=g)
    return token_logps, completion_mask, labels, ref_logps, kl_token_logps, kl_mask, ref_kl


@pytest.mark.parametrize("kl_shift,desirable_weight,undesirable_weight", [(0.8, 1.0, 1.0), (-0.8, 1.5, 0.7), (0.5, 0.6, 2.0)])
def test_kto_loss_gradient_and_rewards_match_trl(kl_shift, desirable_weight, undesirable_weight):
    tok, mask, labels, ref, kl_tok, kl_mask, ref_kl = _random_unpaired(kl_shift=kl_shift, seed=int(10 * kl_shift) + 3)
    beta = 0.3
    trl_loss, metrics = trl_kto_loss(tok, mask, labels, ref, kl_tok, kl_mask, ref_kl, beta, desirable_weight, undesirable_weight)
    (trl_grad,) = torch.autograd.grad(trl_loss, tok)

    policy = sequence_logps(tok, mask[:, 1:])  # [B]
    kl = kl_baseline(sequence_logps(kl_tok, kl_mask[:, 1:]), ref_kl)
    out = kto_loss(policy[labels], policy[~labels], ref[labels], ref[~labels], kl, beta, desirable_weight, undesirable_weight)
    (grad,) = torch.autograd.grad(out.loss, tok)
    exact = dict(rtol=0.0, atol=1e-6)
    assert (metrics["kl"][0] > 0) == (kl_shift > 0), "the inputs should put the KL estimate on the intended side of 0"
    assert_close(out.loss, trl_loss, **exact)
    assert_close(grad, trl_grad, **exact)
    assert out.kl.item() == pytest.approx(metrics["kl"][0], abs=1e-6)
    assert out.rewards_desirable.mean().item() == pytest.approx(metrics["rewards/chosen"][0], abs=1e-6)
    assert out.rewards_undesirable.mean().item() == pytest.approx(metrics["rewards/rejected"][0], abs=1e-6)

    # per example: TRL on a batch of one example, the same KL rows (TRL's z0 depends only on those)
    per_loss, per_reward = [], []
    for i in range(len(labels)):
        one = slice(i, i + 1)
        loss_i, metrics_i = trl_kto_loss(tok[one], mask[one], labels[one], ref[one], kl_tok, kl_mask, ref_kl, beta,
                                         desirable_weight, undesirable_weight)
        per_loss.append(loss_i.detach())
        per_reward.append(metrics_i["rewards/chosen" if labels[i] else "rewards/rejected"][0])
    per_loss, per_reward = torch.stack(per_loss), torch.tensor(per_reward)
    assert_close(out.desirable_losses.detach(), per_loss[labels], **exact)
    assert_close(out.undesirable_losses.detach(), per_loss[~labels], **exact)
    assert_close(out.rewards_desirable, per_reward[labels], **exact)
    assert_close(out.rewards_undesirable, per_reward[~labels], **exact)
