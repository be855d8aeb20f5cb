"""The training loop's prompt sampler: epochs and restoring its state."""

from rftkit.train.loop import PromptSampler


def test_prompt_sampler_epochs_and_restore():
    s = PromptSampler(5, seed=3, shuffle=True)
    first = s.take(5)
    assert sorted(first) == list(range(5))  # one epoch = every item once
    s.take(2)
    state = s.state()
    expected = s.take(6)
    t = PromptSampler(5, seed=3, shuffle=True)
    t.restore(state)
    assert t.take(6) == expected
    assert PromptSampler(4, seed=0, shuffle=False).take(6) == [0, 1, 2, 3, 0, 1]
