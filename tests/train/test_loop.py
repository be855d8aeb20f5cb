"""The prompt sampler the training loop draws from (rftkit/data/sampler.py): epochs and restoring its state."""

from rftkit.data.sampler import PromptSampler


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


def test_callbacks_see_every_step_in_order_with_its_result(tmp_path, toy_model_dir):
    from tests.train.test_grpo_variants import grpo_config

    from rftkit.train.loop import Callback, Trainer
    from rftkit.train.sinks import read_jsonl
    from rftkit.train.stages.base import StepResult

    class Record(Callback):
        def __init__(self):
            self.calls = []

        def on_train_begin(self, trainer):
            self.calls.append(("begin", trainer.policy.version))

        def on_step_begin(self, step):
            self.calls.append(("step_begin", step))

        def on_step_end(self, step, result):
            assert isinstance(result, StepResult)
            self.calls.append(("step_end", step, len(result.groups), result.metrics["critic/rewards/mean"]))

        def on_train_end(self, final):
            self.calls.append(("end", final))

    record = Record()
    trainer = Trainer(grpo_config(toy_model_dir, tmp_path / "run"), quiet=True, callbacks=[record])
    final = trainer.train()
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert record.calls == [
        ("begin", 0),
        ("step_begin", 1), ("step_end", 1, 2, rows[0]["critic/rewards/mean"]),
        ("step_begin", 2), ("step_end", 2, 2, rows[1]["critic/rewards/mean"]),
        ("end", final),
    ]
    assert trainer.policy.version == 2  # one optimizer step per GRPO step (mu = 1)
