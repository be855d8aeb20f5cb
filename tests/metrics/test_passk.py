"""pass@k: the unbiased estimator against values worked by hand."""

import pytest

from rftkit.metrics.passk import pass_at_k


@pytest.mark.parametrize(
    "n,c,k,expected",
    [(8, 2, 1, 0.25), (4, 1, 2, 0.5), (8, 0, 8, 0.0), (8, 1, 8, 1.0), (5, 2, 3, 0.9)],
    # (4,1,2): 1 - C(3,2)/C(4,2) = 1 - 3/6; (5,2,3): 1 - C(3,3)/C(5,3) = 1 - 1/10
)
def test_pass_at_k_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected)
