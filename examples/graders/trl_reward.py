"""TRL-style reward functions for the arithmetic task (examples/arithmetic).

Plain Python with no rftkit import: the same file works as `reward_funcs=[...]` in TRL's
GRPOTrainer and as an rftkit `reward_function` grader (reward_function.yaml). Each
function takes the completions and the dataset columns as keyword lists and returns one
reward per completion (None: "does not apply to this sample").

    >>> reward(["18 + 33 = 51. 51 + 64 = 115. ANSWER: 115"], reference_answer=["115"])
    [1.0]
"""

import re

ANSWER_RE = re.compile(r"ANSWER:\s*(-?\d+)\s*$")
STEP_RE = re.compile(r"(-?\d+) ([+-]) (\d+) = (-?\d+)")


def format_reward(completions, **kwargs):
    """1.0 when the completion ends with an `ANSWER: <integer>` line, else 0.0."""
    return [1.0 if ANSWER_RE.search(c.strip()) else 0.0 for c in completions]


def correctness_reward(completions, reference_answer, **kwargs):
    """1.0 when the final `ANSWER:` equals the reference; None for a row without one."""
    rewards = []
    for completion, ref in zip(completions, reference_answer):
        match = ANSWER_RE.search(completion.strip())
        rewards.append(None if ref is None else float(match is not None and int(match.group(1)) == int(ref)))
    return rewards


def steps_reward(completions, **kwargs):
    """The share of the worked steps (`a + b = c`) whose arithmetic is right; 0 with no step."""
    rewards = []
    for completion in completions:
        steps = STEP_RE.findall(completion)
        right = [int(a) + (int(b) if op == "+" else -int(b)) == int(c) for a, op, b, c in steps]
        rewards.append(sum(right) / len(right) if right else 0.0)
    return rewards


def reward(completions, reference_answer, **kwargs):
    """The grader's default: correctness, plus a little for well-formed, correctly worked steps.

    0.8 * correct + 0.1 * format + 0.1 * steps, so a right answer always beats a wrong one.
    """
    correct = correctness_reward(completions, reference_answer)
    fmt = format_reward(completions)
    steps = steps_reward(completions)
    return [None if c is None else 0.8 * c + 0.1 * f + 0.1 * s for c, f, s in zip(correct, fmt, steps)]
