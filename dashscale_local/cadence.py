"""How often to look: pure functions that pick the next polling interval, so idle work
costs close to nothing while a change or a memory limit near at hand is seen at once.

They take numbers (times, sizes) and return seconds; the loops that poll (memory guard,
runner monitor and log tail, proxy health checks, dashboard history) call them. See
docs/idle.md for the measurements behind the defaults.
"""


def busy_interval(now, last_activity, fast, slow, settle=2.0):
    """``fast`` for ``settle`` s after the last activity (a change seen, a line read, a
    dashboard poll), else ``slow``."""
    if last_activity is not None and now - last_activity < settle:
        return fast
    return max(fast, slow)


def backoff_interval(current, base, cap, busy):
    """The next period of a check that matters only while something uses it: ``base``
    while busy; doubled after each idle round, up to ``cap``."""
    if busy or current < base:
        return base
    return min(max(base, cap), current * 2)


def guard_interval(headroom, rate, fast, slow, max_growth):
    """Seconds until a replica's next memory sweep.

    ``headroom``: its limit minus the upper bound of its metric at this sweep (bytes);
    ``rate``: how fast that bound grew since its previous sweep (bytes/s, may be < 0);
    ``max_growth``: the fastest growth assumed (bytes/s). Growing at
    ``speed = max(max_growth, 2 × rate)`` it cannot reach the limit within
    ``headroom / speed`` s, so the next sweep comes then (or after ``fast`` s if that is
    sooner than ``fast``, or after ``slow`` s if that is later). By induction over the
    sweeps, the time from a crossing to the sweep that sees it stays within ``fast`` for
    any growth up to ``speed``, as with a fixed ``fast`` period.
    """
    if headroom <= 0 or max_growth <= 0:
        return fast
    speed = max(max_growth, 2.0 * rate)
    return min(max(fast, slow), max(fast, headroom / speed))
