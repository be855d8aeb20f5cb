"""Mixtures: prompts drawn by weight, deterministically, resumably, without repeats inside a source's epoch."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from rftkit.data.mixture import MixtureSampler, SourceItems
from rftkit.types import Item


def test_shares_match_the_weights_within_sampling_error():
    sampler = MixtureSampler([50, 30, 20], [5, 3, 2], seed=3, shuffle=True)
    draws = sampler.take(6000)
    counts = Counter(0 if i < 50 else 1 if i < 80 else 2 for i in draws)
    for source, p in enumerate((0.5, 0.3, 0.2)):
        sd = (6000 * p * (1 - p)) ** 0.5
        assert abs(counts[source] - 6000 * p) < 4 * sd, (source, counts)


def test_a_source_repeats_no_row_before_its_epoch_ends():
    sampler = MixtureSampler([10, 7], [1, 1], seed=0, shuffle=True)
    per_source = {0: [], 1: []}
    for i in sampler.take(200):
        per_source[0 if i < 10 else 1].append(i)
    for source, rows in per_source.items():
        size = 10 if source == 0 else 7
        for start in range(0, len(rows) - size + 1, size):  # every full epoch holds each row once
            assert sorted(rows[start : start + size]) == list(range(10 * source, 10 * source + size))


def test_restored_state_continues_the_same_sequence_and_stays_small():
    a = MixtureSampler([40, 9], [2, 1], seed=11, shuffle=True)
    first = a.take(37)
    state = json.loads(json.dumps(a.state()))  # what a checkpoint stores
    rest = a.take(50)
    b = MixtureSampler([40, 9], [2, 1], seed=11, shuffle=True)
    b.restore(state)
    assert b.take(50) == rest
    assert len(json.dumps(state)) < 200  # counters, not the drawn order
    full = MixtureSampler([40, 9], [2, 1], seed=11, shuffle=True).take(87)
    assert first + rest == full  # neither a repeat nor a skip at the seam


def test_another_seed_draws_another_order():
    assert MixtureSampler([20, 20], [1, 1], 0, True).take(30) != MixtureSampler([20, 20], [1, 1], 1, True).take(30)


def test_a_checkpoint_of_another_mixture_is_refused():
    state = MixtureSampler([5, 5, 5], [1, 1, 1], 0, True).state()
    with pytest.raises(ValueError, match="3 sources"):
        MixtureSampler([5, 5], [1, 1], 0, True).restore(state)


def test_source_items_lay_sources_end_to_end_tagged_with_their_names():
    a = [Item(id=f"a{i}", messages=[{"role": "user", "content": "x"}]) for i in range(3)]
    b = [Item(id=f"b{i}", messages=[{"role": "user", "content": "y"}]) for i in range(2)]
    items = SourceItems(["arith", "code"], [a, b])
    assert len(items) == 5
    assert [(x.id, x.source) for x in items] == [("a0", "arith"), ("a1", "arith"), ("a2", "arith"),
                                                 ("b0", "code"), ("b1", "code")]
    assert items[-1].id == "b1" and a[0].source is None  # tagged copies; the loaded items are untouched
    with pytest.raises(IndexError):
        items[5]
