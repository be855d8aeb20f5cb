"""Fast unit tests of rollout on a toy model: the HF engine, sampling, shared prefill and the lean decode loop."""

import math

import os

import pytest
import torch
from torch.testing import assert_close

from tests.conftest import EXAMPLES

from rftkit.data import load_items
from rftkit.models import load_model, load_tokenizer
from rftkit.models.batching import pack_prompt_completion, token_logprobs
from rftkit.rollout.base import SamplingParams
from rftkit.rollout.hf import HFEngine


@pytest.fixture(scope="module")
def toy(toy_model_dir):
    return load_model(str(toy_model_dir)), load_tokenizer(str(toy_model_dir))


def test_engine_groups_and_sampling_logprobs_match_the_training_forward(toy):
    model, tok = toy
    items = load_items(EXAMPLES / "val.jsonl")[:3]
    torch.manual_seed(0)
    groups = HFEngine(model, tok, batch_size=4, return_logprobs=True).generate(items, 3, SamplingParams(max_new_tokens=12))
    assert [g.item.id for g in groups] == [i.id for i in items] and all(len(g.completions) == 3 for g in groups)
    prompts = [g.prompt_ids for g in groups for _ in g.completions]
    comps = [c.token_ids for g in groups for c in g.completions]
    ids, attention, mask = pack_prompt_completion(prompts, comps, tok.pad_token_id)
    with torch.no_grad():
        logp = token_logprobs(model(input_ids=ids, attention_mask=attention).logits, ids)  # [B, T-1]
    for row, (p, c) in enumerate(zip(prompts, [c for g in groups for c in g.completions])):
        assert c.finish_reason in ("stop", "length") and len(c.token_ids) <= 12
        assert (c.finish_reason == "stop") == (c.token_ids[-1] == tok.eos_token_id)
        assert tok.pad_token_id not in c.token_ids
        # left-padded sampling and right-padded training see the same distribution
        assert_close(logp[row, len(p) - 1 : len(p) - 1 + len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4, rtol=0)
        assert mask[row].sum().item() == len(c.token_ids)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampling_entropy_and_tempered_logprobs_match_the_training_forward(toy, temperature):
    """The engine's entropy meter and its log-probs describe the distribution actually sampled."""
    model, tok = toy
    items = load_items(EXAMPLES / "val.jsonl")[:4]
    torch.manual_seed(1)
    engine = HFEngine(model, tok, batch_size=8, return_logprobs=True)
    groups = engine.generate(items, 2, SamplingParams(temperature=temperature, max_new_tokens=10))
    prompts = [g.prompt_ids for g in groups for _ in g.completions]
    comps = [c for g in groups for c in g.completions]
    ids, attention, mask = pack_prompt_completion(prompts, [c.token_ids for c in comps], tok.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attention).logits / temperature  # [B, T, V]
    logp = torch.log_softmax(logits[:, :-1], -1)
    entropy = -(logp.exp() * logp).sum(-1)  # [B, T-1]
    # each completion carries its tokens' summed entropy; over the batch that is the mean per token
    # rollout_metrics reports as actor/entropy
    for row, c in enumerate(comps):
        assert c.entropy == pytest.approx((entropy[row] * mask[row]).sum().item(), rel=1e-4)
    expected = (entropy * mask).sum() / mask.sum()
    assert sum(c.entropy for c in comps) / sum(len(c.token_ids) for c in comps) == pytest.approx(expected.item(), rel=1e-4)
    sampled = token_logprobs(logits, ids)
    for row, c in enumerate(comps):
        start = len(prompts[row]) - 1
        assert_close(sampled[row, start : start + len(c.token_ids)], torch.tensor(c.logprobs), atol=1e-4, rtol=0)


def test_generation_is_reproducible_from_the_seed(toy):
    model, tok = toy
    items = load_items(EXAMPLES / "val.jsonl")[:2]
    runs = []
    for _ in range(2):
        torch.manual_seed(7)
        runs.append([c.token_ids for g in HFEngine(model, tok).generate(items, 2, SamplingParams(max_new_tokens=8)) for c in g.completions])
    assert runs[0] == runs[1]


def test_sampling_ignores_the_models_own_sampling_settings(toy_model_dir):
    # A model's generation_config may carry repetition_penalty, top_k, top_p (Qwen2.5-Instruct does);
    # applied silently, they make sampling differ from the distribution the loss assumes.
    model, tok = load_model(str(toy_model_dir)), load_tokenizer(str(toy_model_dir))
    items = load_items(EXAMPLES / "val.jsonl")[:4]

    def sample():
        torch.manual_seed(0)
        return [c.token_ids for g in HFEngine(model, tok).generate(items, 4, SamplingParams(max_new_tokens=12)) for c in g.completions]

    plain = sample()
    model.generation_config.repetition_penalty = 3.0
    model.generation_config.top_k = 5
    model.generation_config.top_p = 0.5
    assert sample() == plain


def test_sampling_warper_top_k_and_top_p_by_hand():
    from rftkit.rollout.hf import SamplingWarper

    scores = torch.log(torch.tensor([[0.1, 0.6, 0.3]]))
    kept = lambda **kw: torch.isfinite(SamplingWarper([0], SamplingParams(**kw)).warp(scores)).tolist()  # noqa: E731
    assert kept(top_k=2) == [[False, True, True]]
    assert kept(top_p=0.5) == [[False, True, False]]  # 0.6 alone reaches 0.5
    assert kept(top_p=0.7) == [[False, True, True]]  # 0.6 < 0.7: the next token (0.3) joins
    assert kept(top_p=1.0, top_k=0) == [[True, True, True]]
    halved = SamplingWarper([0], SamplingParams(temperature=0.5)).warp(scores)
    assert_close(torch.softmax(halved, -1), torch.tensor([[0.01, 0.36, 0.09]]) / 0.46)  # p^(1/T), renormalised


def test_shared_prefill_gives_the_same_samples_as_a_full_prefill(toy, monkeypatch):
    model, tok = toy
    items = load_items(EXAMPLES / "val.jsonl")[:5]
    engine = HFEngine(model, tok, batch_size=64, return_logprobs=True)
    ones = torch.ones(5, 3, dtype=torch.long)
    assert engine._shared_prefill([[5, 6, 7]] * 3 + [[5, 6]] * 2, ones, ones) is not None  # runs of any length share
    assert engine._shared_prefill([[5, 6, 7], [5, 6], [7], [6], [5]], ones, ones) is None  # nothing to share
    runs = []
    for share in (True, False):
        if not share:
            monkeypatch.setattr(HFEngine, "_shared_prefill", lambda self, *a: None)
        torch.manual_seed(3)
        groups = engine.generate(items, 4, SamplingParams(max_new_tokens=12))
        runs.append([(c.token_ids, c.logprobs) for g in groups for c in g.completions])
    assert [ids for ids, _ in runs[0]] == [ids for ids, _ in runs[1]]
    for (_, shared), (_, full) in zip(*runs):
        assert_close(torch.tensor(shared), torch.tensor(full), atol=1e-5, rtol=0)


def _samples(engine, items, n, sampling, seed=5):
    torch.manual_seed(seed)
    return [c.token_ids for g in engine.generate(items, n, sampling) for c in g.completions]


def _qwen2(tok):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return Qwen2ForCausalLM(cfg).eval()  # q/k/v biases and grouped-query attention, unlike the toy Llama


@pytest.fixture(params=["c-kernel", "pytorch"])
def attention_kernel(request, monkeypatch):
    """Run the decode loop with its C attention kernel (rftkit/native), then with its PyTorch path."""
    from rftkit import native

    if request.param == "pytorch":
        native.available()
        monkeypatch.setattr(native, "_library", None)
    elif not native.available():  # else this variant would silently re-run the PyTorch path
        if native._compiler() is not None or os.environ.get("CI"):
            pytest.fail("the C attention kernel did not build (a compiler is present, or this is CI)")
        pytest.skip("no C compiler: the kernel variant cannot run here")
    return request.param


@pytest.mark.parametrize("arch", ["llama", "llama-lora", "qwen2"])
@pytest.mark.parametrize("sampling", [SamplingParams(max_new_tokens=12), SamplingParams(temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=12),
                                      SamplingParams(temperature=0.0, max_new_tokens=12)], ids=["t1", "warped", "greedy"])
def test_lean_decode_samples_the_same_tokens_as_generate(toy, arch, sampling, attention_kernel):
    from rftkit.models import apply_lora
    from rftkit.models.layout import supports

    model, tok = toy
    if arch == "qwen2":
        model = _qwen2(tok)
    if arch == "llama-lora":
        model = apply_lora(load_model(str(tok.name_or_path)), 4, 8.0, 0.0, "all-linear")
        with torch.no_grad():  # a fresh adapter is zero: make it change the outputs
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    assert supports(model)
    items = load_items(EXAMPLES / "val.jsonl")[:5]  # prompts of different lengths: left padding
    for n in (1, 4):  # n = 1: a plain prefill; n = 4: the shared prefill
        lean = _samples(HFEngine(model, tok, lean=True), items, n, sampling)
        reference = _samples(HFEngine(model, tok, lean=False), items, n, sampling)
        assert lean == reference
        assert any(len(t) > 1 for t in lean)


def test_lean_decode_drops_finished_rows_and_still_samples_what_generate_samples(monkeypatch, attention_kernel):
    # The bundled model stops after ~30 tokens at different lengths, so rows leave the loop
    # mid-way (the toy model almost never emits its stop token); the random numbers stay the
    # full batch's, so the tokens must still be generate()'s. Prompts of different lengths,
    # and a batch that is not a multiple of the copies per prompt (batch_size 10, n 4).
    from rftkit.rollout import decode

    model, tok = load_model("bundled:tiny-arith"), load_tokenizer("bundled:tiny-arith")
    selected = []
    original = decode.SplitCache.select
    monkeypatch.setattr(decode.SplitCache, "select", lambda self, rows: (selected.append(len(rows)), original(self, rows))[1])
    items = load_items(EXAMPLES / "val.jsonl")[:6]
    sampling = SamplingParams(max_new_tokens=40)
    runs = {}
    for mode in (True, False):
        torch.manual_seed(5)
        runs[mode] = [c for g in HFEngine(model, tok, batch_size=10, lean=mode).generate(items, 4, sampling) for c in g.completions]
    lean, reference = ([c.token_ids for c in runs[mode]] for mode in (True, False))
    assert lean == reference
    assert selected, "no row ever left the batch"
    # each row's entropy is metered into its own slot, also after rows left the batch
    assert_close(torch.tensor([c.entropy for c in runs[True]]), torch.tensor([c.entropy for c in runs[False]]),
                 atol=1e-4, rtol=1e-4)
    assert len({len(t) for t in lean}) > 3  # rows really did stop at different steps



def test_on_token_sees_every_token_as_it_is_drawn_and_does_not_change_them(attention_kernel):
    # A server streams replies from on_token (server/serving.py): per row, the tokens it reports are
    # the completion's, in order, across the engine's batch chunks (batch_size 5 of 12 rows).
    model, tok = load_model("bundled:tiny-arith"), load_tokenizer("bundled:tiny-arith")
    prompts = [tok(f"What is {i} + 3?").input_ids for i in range(6) for _ in range(2)]
    sampling = SamplingParams(max_new_tokens=30)
    torch.manual_seed(3)
    plain = HFEngine(model, tok, batch_size=5).generate_from_ids(prompts, sampling)
    seen: dict[int, list[int]] = {}
    steps = []
    torch.manual_seed(3)
    streamed = HFEngine(model, tok, batch_size=5).generate_from_ids(
        prompts, sampling, on_token=lambda rows, tokens: (steps.append(len(rows)),
                                                          [seen.setdefault(r, []).append(t) for r, t in zip(rows, tokens)]))
    assert [c.token_ids for c in streamed] == [c.token_ids for c in plain]
    assert [seen[r] for r in range(len(prompts))] == [c.token_ids for c in streamed]
    assert len(steps) > 10 and min(steps) < max(steps)  # called each step, for the rows still going


def test_lean_decode_is_skipped_for_models_it_does_not_know(toy):
    from transformers import GPT2Config, GPT2LMHeadModel

    from rftkit.models.layout import supports

    model, tok = toy
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, eos_token_id=tok.eos_token_id))
    assert supports(model) and not supports(gpt2)
    engine = HFEngine(gpt2, tok)
    assert not engine.lean
    assert len(_samples(engine, load_items(EXAMPLES / "val.jsonl")[:2], 2, SamplingParams(max_new_tokens=4))) == 4


def _sgd_policy(module):
    from rftkit.policy import LocalPolicy

    optimizer = torch.optim.SGD(module.parameters(), lr=0.0)
    return LocalPolicy(module, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0))


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "generate"])
def test_completions_carry_their_entropy_and_the_version_of_the_weights_that_sampled_them(toy_model_dir, lean):
    model, tok = load_model(str(toy_model_dir)), load_tokenizer(str(toy_model_dir))
    engine = HFEngine(model, tok, batch_size=5, lean=lean)  # 3 items x 3: two batches, the second partial
    assert engine.lean == lean
    items = load_items(EXAMPLES / "val.jsonl")[:3]
    sampling = SamplingParams(temperature=1.0, max_new_tokens=8)

    def completions():
        torch.manual_seed(0)
        return [c for g in engine.generate(items, 3, sampling) for c in g.completions]

    first = completions()
    assert len(first) == 9
    for c in first:
        assert math.isfinite(c.entropy) and c.entropy > 0
        assert c.version == 0
    engine.update_weights(_sgd_policy(model), 7)  # a policy over the engine's own module: nothing to copy
    assert engine.version == 7
    again = completions()
    assert [c.version for c in again] == [7] * 9
    assert [c.token_ids for c in again] == [c.token_ids for c in first]  # same weights, same seed
    assert all(math.isfinite(c.entropy) and c.entropy > 0 for c in again)

    # weights from elsewhere: a state dict, or a policy over another module, are loaded into the engine's module
    other = load_model(str(toy_model_dir))
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))
    engine.update_weights({n: p.detach().clone() for n, p in other.named_parameters()}, 8)
    for (name, mine), theirs in zip(model.named_parameters(), other.parameters()):
        assert torch.equal(mine, theirs), name
    assert {c.version for c in completions()} == {8}
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(0.5)
    engine.update_weights(_sgd_policy(other), 9)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
    assert {c.version for c in completions()} == {9}


def test_several_end_of_turn_tokens_with_pad_equal_to_eos(toy_model_dir):
    """generation_config lists two end ids and the tokenizer pads with eos: every completion ends at the
    first of either (kept in token_ids, out of the text), and nothing after it, pads included, is kept."""
    model, tok = load_model(str(toy_model_dir)), load_tokenizer(str(toy_model_dir))
    tok.pad_token = tok.eos_token
    items = load_items(EXAMPLES / "val.jsonl")[:2]
    greedy = SamplingParams(temperature=1.0, max_new_tokens=12)  # same seed, same draws up to the new stop
    torch.manual_seed(0)
    plain = HFEngine(model, tok, batch_size=4).generate(items, 1, greedy)
    ids = plain[0].completions[0].token_ids
    at = next(k for k in range(1, len(ids)) if ids[k] not in ids[:k] and ids[k] != tok.eos_token_id)
    second = ids[at]  # a token greedy decoding emits later, for the first time: now it also ends the turn
    model.generation_config.eos_token_id = [tok.eos_token_id, second]
    engine = HFEngine(model, tok, batch_size=4)
    assert engine.pad_id == tok.eos_token_id and set(engine.stop_ids) == {tok.eos_token_id, second}
    torch.manual_seed(0)
    groups = engine.generate(items, 1, greedy)
    first = groups[0].completions[0]
    assert first.token_ids == ids[: at + 1] and first.finish_reason == "stop"
    assert first.text == tok.decode(first.token_ids[:-1], skip_special_tokens=True)
    for g in groups:
        for c in g.completions:
            stops = [k for k, t in enumerate(c.token_ids) if t in (tok.eos_token_id, second)]
            assert stops in ([], [len(c.token_ids) - 1]), c.token_ids  # one end id, the last one, or none
            assert (c.finish_reason == "stop") == bool(stops)
