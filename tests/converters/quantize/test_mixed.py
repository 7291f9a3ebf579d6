"""The greedy ladder order of ``mixed.order_moves`` on hand-made scores."""

from __future__ import annotations

from edgeq.converters.quantize.mixed import Rung, order_moves

RUNGS = [Rung("int4", {}, 4.0), Rung("int8", {}, 8.0), Rung("fp16", None, 16.0)]
NUMEL = {"a": 100, "b": 100, "c": 400}
SCORES = {"int4": {"a": 10.0, "b": 1.0, "c": 10.0}, "int8": {"a": 1.0, "b": 0.9, "c": 0.1}}


def test_moves_take_the_most_score_per_byte_first_and_end_at_the_top() -> None:
    moves = order_moves([["a"], ["b"], ["c"]], RUNGS, SCORES, NUMEL)
    # a: 9 saved for 50 bytes; c: 9.9 for 200 bytes; b: 0.1 for 50 bytes
    assert [(m.group, m.to) for m in moves[:2]] == [(0, 1), (2, 1)]
    at = {0: 0, 1: 0, 2: 0}
    for m in moves:
        assert m.to > at[m.group]
        at[m.group] = m.to
    assert at == {0: 2, 1: 2, 2: 2}


def test_memory_cap_cuts_the_sequence() -> None:
    moves = order_moves([["a"], ["b"], ["c"]], RUNGS, SCORES, NUMEL, max_extra_bytes=60)
    assert [(m.group, m.to, m.cost) for m in moves] == [(0, 1, 50)]


def test_a_group_costs_and_scores_as_its_members_sum() -> None:
    moves = order_moves([["a", "b"], ["c"]], RUNGS, SCORES, NUMEL)
    # (a, b) to int8: 11 - 1.9 saved for 200 weights x 4 bits; c to int8: 9.9 for 400 x 4 bits
    assert [(m.group, m.to, m.cost) for m in moves[:2]] == [(0, 1, 100), (1, 1, 200)]
    assert abs(moves[0].gain - 9.1) < 1e-9
