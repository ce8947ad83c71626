"""Gaps in a source's frame numbers, as stage 0 counts them: any publisher's lost frames."""

from __future__ import annotations

from aiotedge.nodes.observe.gaps import REMEMBERED, Arrival, SequenceGaps


def arrivals(numbers: list[int], source: str = "cam") -> list[Arrival]:
    gaps = SequenceGaps()
    return [gaps.arrived(source, seq) for seq in numbers]


def test_numbers_in_order_skip_nothing():
    assert arrivals([0, 1, 2, 3]) == [Arrival()] * 4


def test_a_gap_is_counted_when_a_later_number_comes_and_a_late_one_is_told_apart():
    assert arrivals([0, 1, 4, 2, 5, 2]) == [
        Arrival(), Arrival(), Arrival(skipped=2), Arrival(late=True), Arrival(),
        Arrival(),  # 2 again: a resend, neither missing nor late any more
    ]


def test_sources_are_followed_apart():
    gaps = SequenceGaps()
    assert gaps.arrived("a", 0) == gaps.arrived("b", 0) == Arrival()
    assert gaps.arrived("a", 3) == Arrival(skipped=2)
    assert gaps.arrived("b", 1) == Arrival()


def test_a_restart_or_a_renumbering_is_not_a_loss():
    assert arrivals([0, 1, 2, 0, 1]) == [Arrival()] * 5
    assert arrivals([5, 6, 6 + REMEMBERED + 1, 6 + REMEMBERED + 2]) == [Arrival()] * 4
