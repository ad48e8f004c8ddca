"""The adaptive polling intervals (dashscale_local.cadence): pure functions, fake times."""
from dashscale_local.cadence import backoff_interval, busy_interval, guard_interval

MiB, GiB = 1 << 20, 1 << 30
FAST, SLOW, GROWTH = 0.25, 1.0, 4 * GiB


def test_busy_interval_is_fast_only_right_after_activity():
    assert busy_interval(100.0, None, 0.2, 1.0) == 1.0           # nothing ever happened
    assert busy_interval(100.0, 99.5, 0.2, 1.0) == 0.2           # a change 0.5 s ago
    assert busy_interval(100.0, 97.9, 0.2, 1.0, settle=2) == 1.0  # settled
    assert busy_interval(100.0, None, 0.2, 0.1) == 0.2           # never faster than fast


def test_backoff_interval_doubles_while_idle_and_resets_on_use():
    period, seen = 2.0, []
    for _ in range(6):
        period = backoff_interval(period, 2.0, 30.0, busy=False)
        seen.append(period)
    assert seen == [4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff_interval(30.0, 2.0, 30.0, busy=True) == 2.0
    assert backoff_interval(2.0, 2.0, 1.0, busy=False) == 2.0    # a cap below base: base


def test_guard_idle_far_from_the_limit_is_slow():
    # 150 MiB used of 8 GiB, not growing: 7.85 GiB at 4 GiB/s is ~2 s away
    assert guard_interval(8 * GiB - 150 * MiB, 0, FAST, SLOW, GROWTH) == SLOW


def test_guard_near_the_limit_is_fast():
    assert guard_interval(0, 0, FAST, SLOW, GROWTH) == FAST
    assert guard_interval(-5 * MiB, 0, FAST, SLOW, GROWTH) == FAST   # over it: decide now
    # 40 MiB left: ~10 ms at 4 GiB/s; 2 GiB left: 0.5 s
    assert guard_interval(40 * MiB, 0, FAST, SLOW, GROWTH) == FAST
    assert guard_interval(2 * GiB, 0, FAST, SLOW, GROWTH) == 0.5


def test_guard_growth_that_would_cross_within_the_slow_interval_is_fast():
    headroom = 6 * GiB   # 1.5 s away at the assumed 4 GiB/s: slow on its own
    assert guard_interval(headroom, 0, FAST, SLOW, GROWTH) == SLOW
    # but it grew at 6 GiB/s since the last sweep: assume twice that from now on
    t = guard_interval(headroom, 6 * GiB, FAST, SLOW, GROWTH)
    assert t == headroom / (12 * GiB) == 0.5
    # shrinking does not slow it beyond what the assumed growth allows
    assert guard_interval(headroom, -GiB, FAST, SLOW, GROWTH) == SLOW


def test_guard_crossing_is_always_seen_within_fast():
    """Simulated sweeps of a replica that starts growing at max_growth at any moment:
    the sweep that sees it over the limit comes at most FAST after the crossing."""
    limit, used = 8 * GiB, 150 * MiB
    for start in (0.0, 0.1, 0.37, 0.99, 1.5):
        t = 0.0
        while True:
            bound = used + GROWTH * max(0.0, t - start)
            if bound >= limit:
                assert t - (start + (limit - used) / GROWTH) <= FAST + 1e-9
                break
            t += guard_interval(limit - bound, 0, FAST, SLOW, GROWTH)
    for headroom in (0, MiB, 100 * MiB, GiB, 3 * GiB, 8 * GiB, 64 * GiB):
        assert FAST <= guard_interval(headroom, 0, FAST, SLOW, GROWTH) <= SLOW


def test_guard_without_an_idle_interval_keeps_a_fixed_period():
    assert guard_interval(8 * GiB, 0, FAST, FAST, GROWTH) == FAST
    assert guard_interval(8 * GiB, 0, FAST, SLOW, 0) == FAST  # growth unknown: fast
