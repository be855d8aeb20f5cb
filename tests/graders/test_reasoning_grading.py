"""Reasoning models: graders score the answer, not the thinking (rollout/thinking.py + Completion.answer).

Real graders through the training executor and through `rft grader run --reasoning`; each case is
built so that a grader shown the thinking would score differently.
"""

import json

import pytest
import yaml

from tests.conftest import run_cli
from rftkit.config import ReasoningConfig
from rftkit.graders import build_grader
from rftkit.graders import tool
from rftkit.graders.executor import ThreadGraderExecutor
from rftkit.rollout.thinking import split_groups, split_thinking
from rftkit.types import Completion, Group, Item

ITEM = Item(id="q", messages=[{"role": "user", "content": "What is 47 + 18 - 9?"}], reference_answer="56")
# the answer sits only in the thinking; the reply after it gives up
GAVE_UP = "<think>47 + 18 = 65. 65 - 9 = 56. ANSWER: 56</think>\n\nI am not sure."
# the thinking tries a wrong answer; the reply is right
RIGHT = "<think>maybe ANSWER: 57? no.</think>\n\n56"


class CharTokenizer:  # one id per character, as the bundled tokenizer
    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def groups_of(*texts):
    return [Group(ITEM, [], [Completion(t, [ord(ch) for ch in t], [], "stop") for t in texts])]


def rewards(spec, groups):
    executor = ThreadGraderExecutor(build_grader(spec, "grader"), timeout_s=10, step_budget_s=30)
    try:
        scores, _ = executor.score(groups)
    finally:
        executor.close()
    return [s.reward for s in scores[0]]


GRADERS = {
    "answer_match": {"type": "answer_match"},
    "string_check": {"type": "string_check", "name": "s", "input": "{{sample.output_text}}",
                     "reference": "{{item.reference_answer}}", "operation": "eq"},
    "regex": {"type": "regex", "name": "no_tags", "pattern": "think|57"},
}


@pytest.mark.parametrize("name, split_rewards, whole_rewards", [
    ("answer_match", [0.0, 0.0], [1.0, 0.0]),  # last ANSWER: the thinking's when graded whole
    ("string_check", [0.0, 1.0], [0.0, 0.0]),  # the answer alone equals the reference
    ("regex", [0.0, 0.0], [1.0, 1.0]),  # tags and the thinking's 57 are invisible to a split grader
])
def test_the_executor_grades_only_the_answer(name, split_rewards, whole_rewards):
    groups = groups_of(GAVE_UP, RIGHT)
    split = split_groups(groups, ReasoningConfig(enabled=True), CharTokenizer())
    assert rewards(GRADERS[name], split) == split_rewards
    assert rewards(GRADERS[name], groups) == whole_rewards  # reasoning disabled: the whole text, as before
    shown = split_groups(groups, ReasoningConfig(enabled=True, grade_thinking=True), CharTokenizer())
    assert rewards(GRADERS[name], shown) == whole_rewards  # grade_thinking: graders see the thinking too
    assert [c.text for c in split[0].completions] == [GAVE_UP, RIGHT]  # what is trained on is unchanged


def test_tool_run_grades_the_split_answer(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(GRADERS["string_check"]))
    got = tool.run(str(path), ITEM, RIGHT, split=split_thinking(RIGHT))
    assert got["reward"] == 1.0
    assert (got["reasoning"], got["answer"], got["thinking_status"]) == ("maybe ANSWER: 57? no.", "56", "ok")
    assert tool.run(str(path), ITEM, RIGHT)["reward"] == 0.0 and "reasoning" not in tool.run(str(path), ITEM, RIGHT)


def test_rft_grader_run_reasoning(tmp_path):
    item = tmp_path / "item.json"
    item.write_text(json.dumps({"id": "q", "messages": ITEM.messages, "reference_answer": "56"}))
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(GRADERS["answer_match"]))
    got = run_cli("grader", "run", str(path), "--item", str(item), "--output", GAVE_UP, "--reasoning", "--json")
    assert got.returncode == 0, got.stderr
    result = json.loads(got.stdout)
    assert result["reward"] == 0.0 and result["answer"] == "I am not sure." and result["thinking_status"] == "ok"
    text = run_cli("grader", "run", str(path), "--item", str(item), "--output", "[T]ANSWER: 1[/T]ANSWER: 56",
                   "--reasoning", "--open-tag", "[T]", "--close-tag", "[/T]")
    assert text.returncode == 0, text.stderr
    assert "thinking (ok): ANSWER: 1" in text.stdout and "answer: ANSWER: 56" in text.stdout
    assert "reward: 1.0" in text.stdout


def test_a_grpo_step_grades_the_answer_and_logs_reasoning_metrics(tmp_path):
    """The bundled model writes `... = 56. ANSWER: 56`: with `ANSWER:` as the close tag (an implicit open, as
    Qwen3's template makes) the thinking is the working and the answer the bare number, which only a grader
    shown the answer alone can find equal to the reference."""
    from rftkit.config import load_config
    from rftkit.train.loop import Trainer
    from rftkit.train.sinks import read_jsonl
    from tests.conftest import EXAMPLES

    grader = tmp_path / "eq.yaml"
    grader.write_text(yaml.safe_dump(GRADERS["string_check"]))
    overrides = [f"run.dir={tmp_path / 'run'}", "train.steps=1", "train.prompts_per_step=4", "rollout.num_generations=4",
                 "train.micro_batch_size=16", "run.eval_interval=0", "run.checkpoint_interval=0", f"grader={grader}",
                 "reasoning.enabled=true", "reasoning.close_tag='ANSWER:'"]
    Trainer(load_config(EXAMPLES / "grpo.yaml", overrides), quiet=True).train()
    (row,) = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    Trainer(load_config(EXAMPLES / "grpo.yaml", overrides[:-2] + [f"run.dir={tmp_path / 'off'}"]), quiet=True).train()
    (off,) = read_jsonl(tmp_path / "off" / "metrics.jsonl")
    assert off["critic/rewards/mean"] == 0 and "response/thinking_length_mean" not in off  # reasoning off: as before
    assert row["critic/rewards/mean"] > 0  # the whole text never equals "56"; its answer part does
    assert row["response/thinking_length_mean"] > row["response/answer_length_mean"] > 0
    assert row["response/thinking_length_mean"] + row["response/answer_length_mean"] == pytest.approx(
        row["response_length/mean"])
    assert row["response/tokens_per_correct"] >= row["response_length/mean"]
