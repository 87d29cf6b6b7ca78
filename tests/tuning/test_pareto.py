"""The tuner's own Pareto front (every objective minimized)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from onnxopt.tuning.pareto import dominates, front_indices


def test_dominated_points_leave_the_front_and_trade_offs_stay():
    # (latency ratio, size): 2 is worse than 0 in both; 0, 1 and 3 each win somewhere
    points = [(0.5, 10.0), (0.9, 4.0), (0.8, 12.0), (0.4, 20.0)]
    assert front_indices(points) == [0, 1, 3]


def test_equal_in_one_objective_and_better_in_another_dominates():
    assert dominates((1.0, 2.0), (1.0, 3.0))
    assert not dominates((1.0, 2.0), (1.0, 2.0))
    assert front_indices([(1.0, 3.0), (1.0, 2.0)]) == [1]


def test_exact_duplicates_keep_the_first_one():
    assert front_indices([(2.0, 1.0), (1.0, 2.0), (2.0, 1.0)]) == [0, 1]


def test_empty_and_single():
    assert front_indices([]) == []
    assert front_indices([(3.0, 1.0, 0.0, 7.0)]) == [0]


vectors = st.lists(st.tuples(*[st.integers(0, 4).map(float)] * 3), max_size=14)


@given(vectors)
def test_front_is_exactly_the_non_dominated_points(points):
    front = front_indices(points)
    assert front == sorted(front)
    for i in front:  # no member is dominated by any point
        assert not any(dominates(q, points[i]) for q in points)
    for j in set(range(len(points))) - set(front):  # every other point is dominated or a repeat of a member
        assert any(dominates(points[i], points[j]) or points[i] == points[j] for i in front)
    assert len({points[i] for i in front}) == len(front)
