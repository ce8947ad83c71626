"""The deploy bench's bookkeeping (bench/cluster/deploy.py) with made-up ticks and results:
the broker's bytes between two $SYS ticks less the background, the first prediction of a
release, and the section written from the JSON."""

from __future__ import annotations

from bench.cluster import deploy
from bench.cluster.deploy import RECEIVED, SENT, ByteTicks, Tick


def ticks(pairs: dict[str, list[tuple[float, int]]]) -> ByteTicks:
    counters = ByteTicks()
    for topic, values in pairs.items():
        for at, value in values:
            counters.add(topic, str(value).encode(), at)
    return counters


def test_the_bytes_of_a_deploy_are_the_growth_between_ticks_less_the_background_rate():
    counters = ticks({RECEIVED: [(1.0, 100), (2.0, 200), (3.0, 300), (4.0, 5_300)],
                      SENT: [(1.0, 10), (2.0, 20), (3.0, 30), (4.0, 9_030)]})
    assert counters.rate(RECEIVED, 0.5, 3.0) == 100.0  # 100 bytes a second before the deploy
    before = counters.wait_after(2.5)
    after = counters.wait_after(3.5)
    assert before == {RECEIVED: Tick(3.0, 300), SENT: Tick(3.0, 30)}
    assert deploy.carried(before[RECEIVED], after[RECEIVED], 100.0) == 4_900
    assert deploy.carried(before[SENT], after[SENT], counters.rate(SENT, 0.5, 3.0)) == 8_990
    # a background busier than the deploy's window does not make bytes negative
    assert deploy.carried(Tick(0.0, 100), Tick(1.0, 150), 1000.0) == 0


def test_a_rate_needs_two_ticks_and_a_payload_that_is_not_a_number_is_no_tick():
    counters = ticks({RECEIVED: [(1.0, 100)]})
    counters.add(RECEIVED, b"not a number", 2.0)
    assert counters.rate(RECEIVED, 0.0, 5.0) == 0.0
    assert counters.first_after(RECEIVED, 1.0) is None


def test_the_first_prediction_is_the_earliest_naming_the_release():
    arrivals = [(1.0, "v1"), (3.0, "v2"), (2.5, "v2"), (4.0, None)]
    assert deploy.first_of_release(arrivals, "v2") == 2.5
    assert deploy.first_of_release(arrivals, "v3") is None


def test_the_stages_are_counted_from_the_deploys_summary():
    output = ("release r1n3-cold: m.tflite in 14 chunks on 3 nodes\n  stage 0: board0\n"
              "  stage 1: board1\n  stage 2: board2\nlive (before: none, which drains)\n")
    assert deploy.stages_said(output) == 3


def result(boards: int, warm: bool, *, live: float, first: float, received: int,
           sent: int) -> dict:
    return {"boards": boards, "release": "r", "warm": warm, "stages": boards, "live_s": live,
            "first_prediction_s": first, "received_bytes": received, "sent_bytes": sent,
            "background_received": 0, "background_sent": 0, "counted_s": live, "load": 1.0}


def test_the_section_shows_each_kind_of_deploy_per_board_count_with_the_spread_of_rounds():
    model = 1_000_000
    data = {"header": {"model": "m.tflite", "model_bytes": model, "chunks": 4, "photos": 3,
                       "camera_side": 320, "frame_kb": 20.0,
                       "cpu": 0.2, "fps": 4.0, "rounds": 2, "link": "loopback",
                       "load_min": 1.0, "load_max": 2.0, "minutes": 3.0},
            "runs": [{"boards": 2, "deploys": [
                         result(2, False, live=5.0, first=6.0, received=model, sent=2 * model),
                         result(2, True, live=1.0, first=1.5, received=1000, sent=2000)]},
                     {"boards": 2, "deploys": [
                         result(2, False, live=7.0, first=8.0, received=model, sent=2 * model),
                         result(2, True, live=2.0, first=2.5, received=1000, sent=2000)]}]}
    text = deploy.markdown(data)
    cold = text.index("**Cold**")
    warm = text.index("**Warm**")
    assert cold < warm
    assert "| 2 | 2 (2 to 2) | 6.0 (5.0 to 7.0) | 7.0 (6.0 to 8.0) | 1.00 (1.00 to 1.00) | " \
        "2.00 (2.00 to 2.00) | 3.0x (3.0 to 3.0) |" in text[cold:warm]
    assert "| 2 | 2 (2 to 2) | 1.5 (1.0 to 2.0) | 2.0 (1.5 to 2.5) |" in text[warm:]
    assert "2 rounds; figures: median (lowest to highest)" in text
