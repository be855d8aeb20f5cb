"""`reward_model` grader: a tiny random LlamaForSequenceClassification scores conversations
exactly as a hand forward of the Hugging Face model does, whatever the batch and padding."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import run_cli
from rftkit.errors import ConfigError
from rftkit.graders import build_grader, load_grader_spec
from rftkit.graders.executor import ThreadGraderExecutor
from rftkit.models.reward import conversation_ids, score_pairs
from rftkit.models import load_tokenizer, sft_example
from rftkit.types import Item

ITEMS = [
    Item(id="a", messages=[{"role": "user", "content": "What is 47 + 18 - 9?"}], reference_answer="56"),
    Item(id="b", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"}]),
]
CALLS = [(ITEMS[0], "47 + 18 = 65, 65 - 9 = 56\nANSWER: 56"), (ITEMS[1], "4"), (ITEMS[0], "ANSWER: 57"),
         (ITEMS[1], "2 + 2 = 4 and that is a longer answer\nANSWER: 4")]


def _save(folder, num_labels=1, causal=False):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    tokenizer = load_tokenizer("bundled:tiny-arith")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         num_labels=num_labels, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model = (LlamaForCausalLM if causal else LlamaForSequenceClassification)(config)
    if not causal:  # a random head gives scores near 0; spread them so sigmoid and ordering checks mean something
        torch.nn.init.normal_(model.score.weight, std=1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return _save(tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="module")
def hand_scores(rm_dir):
    """Each conversation alone through HF's own forward: batch of one, no padding, so its pooled
    logit is the last token's (pad_token_id None makes HF take position -1)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    model.config.pad_token_id = None
    tokenizer = load_tokenizer(str(rm_dir))
    with torch.no_grad():
        return [model(input_ids=torch.tensor([conversation_ids(tokenizer, item.messages, text)])).logits[0, 0].item()
                for item, text in CALLS]


def test_ids_are_sft_example_pairs(rm_dir):
    tokenizer = load_tokenizer(str(rm_dir))
    prompt, answer = sft_example(tokenizer, ITEMS[0].messages, "ANSWER: 56")
    assert conversation_ids(tokenizer, ITEMS[0].messages, "ANSWER: 56") == prompt + answer
    assert answer[-1] == tokenizer.eos_token_id


def test_grade_and_grade_batch_match_a_hand_forward(rm_dir, hand_scores):
    grader = build_grader({"type": "reward_model", "path": str(rm_dir), "batch_size": 3})
    assert grader.name == "reward_model" and not grader.needs_reference
    assert len({round(s, 4) for s in hand_scores}) == len(CALLS)  # distinct scores: a mix-up would show
    single = [grader.grade(item, text) for item, text in CALLS]
    batched = grader.grade_batch(CALLS)  # lengths differ: rows are padded, in a batch of 3 and one of 1
    for want, one, many in zip(hand_scores, single, batched):
        assert one.reward == pytest.approx(want, abs=1e-5) and many.reward == pytest.approx(want, abs=1e-5)
        assert many.breakdown == {"reward_model": many.reward}
    reversed_batch = grader.grade_batch(CALLS[::-1])  # other neighbours, other padding: same scores
    assert [s.reward for s in reversed_batch] == pytest.approx(hand_scores[::-1], abs=1e-5)


def test_padding_does_not_change_scores_even_when_pad_is_eos(rm_dir, hand_scores):
    """score_pairs finds the last token by length, so padding with eos (the last real token) is harmless."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir).eval()
    tokenizer = load_tokenizer(str(rm_dir))
    rows = [conversation_ids(tokenizer, item.messages, text) for item, text in CALLS]
    assert len({len(r) for r in rows}) > 1
    with torch.no_grad():
        for pad in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            assert score_pairs(model, rows, pad).tolist() == pytest.approx(hand_scores, abs=1e-5)


def test_score_pairs_is_differentiable_and_truncates_from_the_left(rm_dir):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    rows = [[5, 6, 7, 8, 9, 2], [7, 8, 9, 2]]
    scores = score_pairs(model, rows, 0, max_length=4)  # [2]: the first row keeps [7, 8, 9, 2]
    assert scores.shape == (2,) and scores[0].item() == pytest.approx(scores[1].item(), abs=1e-5)
    scores.sum().backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0


def test_sigmoid_is_sigmoid_of_the_raw_score(rm_dir, hand_scores):
    grader = build_grader({"type": "reward_model", "path": str(rm_dir), "normalize": "sigmoid", "name": "rm"})
    for want, score in zip(hand_scores, grader.grade_batch(CALLS)):
        assert score.breakdown["rm"] == pytest.approx(want, abs=1e-5)
        assert score.reward == pytest.approx(1 / (1 + math.exp(-score.breakdown["rm"])), abs=1e-9)
        assert 0 < score.reward < 1


def test_executor_grades_through_grade_batch(rm_dir, hand_scores):
    grader = build_grader({"type": "reward_model", "path": str(rm_dir), "batch_size": 2})
    executor = ThreadGraderExecutor(grader, timeout_s=60)
    try:
        scores, stats = executor.grade_calls(CALLS)
    finally:
        executor.close()
    assert stats.errors == 0 and [s.reward for s in scores] == pytest.approx(hand_scores, abs=1e-5)


def test_yaml_path_is_relative_to_the_grader_file(rm_dir, tmp_path, hand_scores):
    import shutil

    shutil.copytree(rm_dir, tmp_path / "models" / "rm")
    (tmp_path / "graders").mkdir()
    path = tmp_path / "graders" / "rm.yaml"
    path.write_text(yaml.safe_dump({"type": "reward_model", "path": "../models/rm"}))
    spec = load_grader_spec(str(path))
    assert Path(spec["path"]).resolve() == (tmp_path / "models" / "rm").resolve()
    assert build_grader(spec).grade(*CALLS[0]).reward == pytest.approx(hand_scores[0], abs=1e-5)


@pytest.mark.parametrize("case", ["missing", "no config", "causal LM", "two labels", "bad option"])
def test_bad_folders_are_config_errors_naming_path_and_fix(tmp_path, case):
    folder = tmp_path / "m"
    spec = {"type": "reward_model", "path": str(folder)}
    if case == "no config":
        folder.mkdir()
    elif case == "causal LM":
        _save(folder, causal=True)
    elif case == "two labels":
        _save(folder, num_labels=2)
    elif case == "bad option":
        _save(folder)
        spec["normalize"] = "softmax"
    with pytest.raises(ConfigError) as err:
        build_grader(spec)
    message = str(err.value)
    expected = {"missing": "no such folder", "no config": "no config.json", "causal LM": "LlamaForCausalLM, not a "
                "sequence-classification", "two labels": "num_labels=2", "bad option": "normalize"}[case]
    assert expected in message, message
    if case != "bad option":
        assert str(folder) in message and "num_labels=1" in message and "algorithm: reward_model" in message


def test_rft_grader_run(rm_dir, tmp_path, hand_scores):
    item_path = tmp_path / "item.json"
    item = CALLS[0][0]
    item_path.write_text(json.dumps({"id": item.id, "messages": item.messages, "reference_answer": "56"}))
    grader_path = tmp_path / "rm.yaml"
    grader_path.write_text(yaml.safe_dump({"type": "reward_model", "path": str(rm_dir)}))
    result = run_cli("grader", "run", str(grader_path), "--item", str(item_path), "--output", CALLS[0][1], "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["errors"] == [] and got["reward"] == pytest.approx(hand_scores[0], abs=1e-5)
    assert got["sub_rewards"] == {"reward_model": got["reward"]}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_scores_match_cpu(rm_dir, hand_scores):
    grader = build_grader({"type": "reward_model", "path": str(rm_dir), "device": "cuda"})
    assert [s.reward for s in grader.grade_batch(CALLS)] == pytest.approx(hand_scores, abs=1e-4)
    assert next(grader.model().parameters()).is_cuda


def test_loading_says_plainly_when_the_head_is_new_and_is_silent_for_a_trained_one(rm_dir, tmp_path, capfd):
    # transformers' multi-line "LOAD REPORT ... score.weight MISSING" table is replaced by one line
    # of ours, and only when the folder is a causal LM (the head is new by design).
    from rftkit.train.stages.reward_model import RewardModelStage

    lm = _save(tmp_path / "lm", causal=True)
    RewardModelStage.load_model(str(lm), "float32", "cpu")
    err = capfd.readouterr().err
    assert "has no scalar head yet; a new one is initialised" in err and "LOAD REPORT" not in err
    RewardModelStage.load_model(str(rm_dir), "float32", "cpu")
    err = capfd.readouterr().err
    assert "scalar head" not in err and "LOAD REPORT" not in err
