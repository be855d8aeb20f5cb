"""scripts/make_stage_data.py: the DPO rejected answer has exactly one slip, splits never mix, output is reproducible."""

from __future__ import annotations

import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

from rftkit.tasks.arithmetic import Problem, random_problem

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "make_stage_data.py"
_spec = importlib.util.spec_from_file_location("make_stage_data", SCRIPT)
stage_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stage_data)

# the format of Problem.solution, every number captured
WORKED = re.compile(r"(-?\d+) ([+-]) (-?\d+) = (-?\d+)\. (-?\d+) ([+-]) (-?\d+) = (-?\d+)\. ANSWER: (-?\d+)")
QUESTION = re.compile(r"What is (\d+) ([+-]) (\d+) ([+-]) (\d+)\?")


def apply(op: str, x: int, y: int) -> int:
    return x + y if op == "+" else x - y


def problem_of(question: str) -> Problem:
    m = QUESTION.fullmatch(question)
    assert m, f"not an arithmetic question: {question!r}"
    a, op1, b, op2, c = m.groups()
    return Problem(int(a), op1, int(b), op2, int(c))


def slips(p: Problem, solution: str) -> list[tuple[str, int]]:
    """The steps of `solution` that are wrong, as (step, error); fails unless it is `p`'s worked line in form."""
    m = WORKED.fullmatch(solution)
    assert m, f"not in the worked-solution format: {solution!r}"
    a, op1, b, mid, mid_again, op2, c, final, answer = m.groups()
    assert (int(a), op1, int(b), op2, int(c)) == (p.a, p.op1, p.b, p.op2, p.c), f"operands changed: {solution!r}"
    assert mid_again == mid, f"second line does not reuse the intermediate: {solution!r}"
    assert answer == final, f"ANSWER line does not repeat the final: {solution!r}"
    wrong = []
    if int(mid) != apply(p.op1, p.a, p.b):
        wrong.append(("intermediate", int(mid) - apply(p.op1, p.a, p.b)))
    if int(final) != apply(p.op2, int(mid), p.c):
        wrong.append(("final", int(final) - apply(p.op2, int(mid), p.c)))
    return wrong


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stage-data")
    stage_data.write_stage_data(out)
    return out


def test_worked_solution_without_a_slip_is_the_problem_solution():
    p = Problem(3, "-", 50, "+", 7)  # a negative intermediate, as the generator can draw
    assert stage_data.worked_solution(p, p.intermediate, p.answer) == p.solution == "3 - 50 = -47. -47 + 7 = -40. ANSWER: -40"
    assert slips(p, p.solution) == []


def test_the_checker_catches_each_kind_of_broken_rejection():
    p = Problem(47, "+", 18, "-", 9)  # 65, 56
    assert slips(p, "47 + 18 = 66. 66 - 9 = 57. ANSWER: 57") == [("intermediate", 1)]
    assert slips(p, "47 + 18 = 65. 65 - 9 = 46. ANSWER: 46") == [("final", -10)]
    assert len(slips(p, "47 + 18 = 66. 66 - 9 = 58. ANSWER: 58")) == 2  # two slips
    for broken in ("47 + 18 = 66. 65 - 9 = 56. ANSWER: 56", "47 + 18 = 65. 65 - 9 = 56. ANSWER: 57", "47 + 18 = 65. 65 - 9 = 56."):
        with pytest.raises(AssertionError):
            slips(p, broken)


def test_slipped_solution_has_exactly_one_small_slip_and_a_wrong_answer():
    rng = random.Random(0)
    kinds = set()
    for _ in range(2000):
        p = random_problem(rng)
        rejected = stage_data.slipped_solution(p, rng)
        (slip,) = slips(p, rejected)
        assert slip[1] in stage_data.SLIPS
        assert WORKED.fullmatch(rejected).group(9) != str(p.answer)
        kinds.add(slip[0])
    assert kinds == {"intermediate", "final"}


def test_row_counts_and_fields(written):
    for (stage, split), (n, _) in stage_data.FILES.items():
        rows = read(written / stage / f"{split}.jsonl")
        assert len(rows) == n, f"{stage}/{split}"
        assert len({r["id"] for r in rows}) == n
        for r in rows:
            assert r["messages"][0]["role"] == "user"
            assert problem_of(r["messages"][0]["content"]).split == split, f"{r['id']} is not a {split}-split problem"
    assert not (written / "asft").exists()
    assert {p.name for p in written.iterdir()} == {"sft", "dpo", "reward_model"}


def test_reward_model_rejected_answers_are_worse_in_their_stated_way(written):
    seen = set()
    for split in ("train", "val"):
        for r in read(written / "reward_model" / f"{split}.jsonl"):
            p = problem_of(r["messages"][0]["content"])
            assert r["chosen"] == p.solution and r["rejected"] != r["chosen"]
            kind, rejected = r["kind"], r["rejected"]
            seen.add(kind)
            if kind == "slip":
                assert len(slips(p, rejected)) == 1
            elif kind == "answer_mismatch":  # the work is right, the ANSWER line is not
                work, answer = rejected.rsplit(" ANSWER: ", 1)
                assert work == p.solution.rsplit(" ANSWER: ", 1)[0] and int(answer) != p.answer
            elif kind == "no_work":
                assert rejected == f"ANSWER: {p.answer}"
            else:
                assert kind == "no_answer_line" and "ANSWER" not in rejected and p.solution.startswith(rejected)
    assert seen == set(stage_data.RM_KINDS)


def test_sft_rows_are_chat_pairs_with_the_correct_solution(written):
    for split in ("train", "val"):
        for r in read(written / "sft" / f"{split}.jsonl"):
            assert set(r) == {"id", "messages"}
            user, assistant = r["messages"]
            assert assistant["role"] == "assistant"
            p = problem_of(user["content"])
            assert assistant["content"] == p.solution
            assert slips(p, assistant["content"]) == []


def test_dpo_rejected_is_the_chosen_with_one_slip(written):
    for split in ("train", "val"):
        kinds, deltas = set(), set()
        for r in read(written / "dpo" / f"{split}.jsonl"):
            assert set(r) == {"id", "messages", "chosen", "rejected", "reference_answer"}
            assert len(r["messages"]) == 1
            p = problem_of(r["messages"][0]["content"])
            assert r["chosen"] == p.solution
            assert r["reference_answer"] == str(p.answer)
            assert slips(p, r["chosen"]) == []
            assert r["rejected"] != r["chosen"]
            m = WORKED.fullmatch(r["rejected"])
            assert m, f"{r['id']}: rejected not in the worked format: {r['rejected']!r}"
            assert m.group(9) != r["reference_answer"], f"{r['id']}: rejected answer is correct"
            slipped = slips(p, r["rejected"])
            assert len(slipped) == 1, f"{r['id']}: want exactly one slip, got {slipped}"
            kind, delta = slipped[0]
            assert delta in stage_data.SLIPS
            kinds.add(kind)
            deltas.add(delta)
        assert kinds == {"intermediate", "final"}, split
        if split == "train":
            assert deltas == set(stage_data.SLIPS)


def test_no_val_question_in_a_train_file(written):
    def questions(stage: str, split: str) -> set[str]:
        return {r["messages"][0]["content"] for r in read(written / stage / f"{split}.jsonl")}

    train = questions("sft", "train") | questions("dpo", "train")
    val = questions("sft", "val") | questions("dpo", "val")
    assert len(val) > 0 and len(train) > 0
    assert not train & val
    # the shipped RL files' held-out questions are not in these train files either
    for held_out in ("val", "test"):
        rl = {r["messages"][0]["content"] for r in read(REPO / "examples" / "arithmetic" / f"{held_out}.jsonl")}
        assert not train & rl, held_out


def test_writer_is_deterministic_and_matches_the_shipped_files(written, tmp_path):
    stage_data.write_stage_data(tmp_path)
    for stage, split in stage_data.FILES:
        rel = Path(stage) / f"{split}.jsonl"
        assert (tmp_path / rel).read_bytes() == (written / rel).read_bytes(), f"{rel} differs between two runs"
        assert (REPO / "examples" / rel).read_bytes() == (written / rel).read_bytes(), (
            f"examples/{rel} is stale: run python scripts/make_stage_data.py"
        )


def test_files_differ_from_the_arithmetic_files(written):
    rl_train = [r["messages"][0]["content"] for r in read(REPO / "examples" / "arithmetic" / "train.jsonl")]
    for stage in ("sft", "dpo"):
        ours = [r["messages"][0]["content"] for r in read(written / stage / "train.jsonl")]
        assert ours[:50] != rl_train[:50]
        assert len(set(ours) & set(rl_train)) < 20  # chance repeats only, not the same draw
