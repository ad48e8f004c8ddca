"""What is in rotation (health.py): readiness probes, the proxy's passive signal, the
active check and removal, decided on a fake clock with fake probe results and a real
balancer.Pool; the driver once against a real socket."""
import asyncio

from hypothesis import given, settings as hsettings, strategies as st

from dashscale_local.balancer import Pool
from dashscale_local.health import Health, HealthDriver, Probe
from dashscale_local.health import http_probe


class Clock:
    def __init__(self, now=100.0):
        self.now = now

    def __call__(self):
        return self.now


def make(interval=2.0):
    clock, changes, pool = Clock(), [], Pool()
    health = Health(pool, interval=interval, clock=clock,
                    on_change=lambda name, pid, ok: changes.append((name, pid, ok)))
    return health, pool, clock, changes


def answer(health, outcome, kind="http"):
    """Run what is due now with this outcome; the probes run."""
    probes = [p for p in health.due() if p.kind == kind]
    for p in probes:
        health.result(p, outcome)
    return probes


def test_new_replica_is_probed_until_it_answers_then_in_rotation():
    health, pool, clock, changes = make()
    health.spawned("web.1", 100, 5006)
    assert health.due() == [Probe("web.1", 100, 5006, "http")]
    assert health.due() == [] and health.next_due() is None  # one probe at a time
    health.result(Probe("web.1", 100, 5006, "http"), None)  # refused: still booting
    assert health.next_due() == clock.now + 0.02 and health.due() == []
    clock.now += 0.02
    answer(health, 200)
    assert health.in_rotation() == ["web.1"] and [b.name for b in pool.rotation] == ["web.1"]
    assert changes == [("web.1", 100, True)]
    health.spawned("web.2", 101, 5007)
    answer(health, 404)
    assert health.in_rotation() == ["web.1", "web.2"]


def test_result_for_an_old_process_is_ignored():
    health, pool, clock, changes = make()
    health.spawned("web.1", 100, 5006)
    [old] = health.due()
    health.spawned("web.1", 101, 5006)  # replaced while the probe ran
    health.result(old, 200)
    assert health.in_rotation() == [] and changes == []
    answer(health, 200)
    assert changes == [("web.1", 101, True)]


def test_passive_failure_reprobes_with_backoff_and_puts_it_back():
    health, pool, clock, changes = make(interval=0)
    health.spawned("web.1", 100, 5006)
    answer(health, 200)
    backend = pool.backends["web.1"]
    pool.acquire(backend)
    pool.connect_failed(backend)  # what the proxy does on a refused connect
    assert health.in_rotation() == [] and pool.rotation == []
    assert changes[-1] == ("web.1", 100, False)
    assert backend.connect_failures == 1
    gaps = []
    for _ in range(9):
        assert len(answer(health, None)) == 1
        gaps.append(round(health.next_due() - clock.now, 3))
        clock.now = health.next_due()
    assert gaps == [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.0, 2.0]
    answer(health, 200)
    assert health.in_rotation() == ["web.1"] and changes[-1] == ("web.1", 100, True)
    assert not backend.failed and backend.in_rotation
    pool.connect_failed(backend, acquired=False)
    assert health.next_due() == clock.now  # re-probed at once, back-off from the start


def test_active_check_each_interval_evicts_on_refusal_or_three_timeouts():
    health, pool, clock, changes = make(interval=2.0)
    for i in (1, 2):
        health.spawned(f"web.{i}", 100 + i, 5005 + i)
    answer(health, 200)
    assert health.next_due() == clock.now + 2.0
    assert health.due() == []
    clock.now += 2.0
    probes = health.due()
    assert sorted(p.kind for p in probes) == ["tcp", "tcp"]
    results = {"web.1": False, "web.2": None}
    for p in probes:
        health.result(p, results[p.name])
    assert health.in_rotation() == ["web.2"]  # refused: out at once
    assert pool.backends["web.1"].connect_failures == 1 and changes[-1] == ("web.1", 101, False)
    for n in (2, 3):  # web.2 timed out once; twice more evicts it
        clock.now += 2.0
        for p in health.due():
            if p.kind == "tcp":
                health.result(p, None)
    assert health.in_rotation() == []
    health.spawned("web.3", 103, 5008)
    answer(health, 200)
    for outcome in (None, None, True, None, None):  # a success resets the count
        clock.now += 2.0
        for p in health.due():
            health.result(p, outcome if p.name == "web.3" else None)
    assert "web.3" in health.in_rotation()


def test_idle_costs_no_wakeups_when_nothing_is_in_rotation_or_checks_are_off():
    health, pool, clock, _ = make(interval=2.0)
    assert health.next_due() is None
    health.spawned("web.1", 100, 5006)
    answer(health, 200)
    assert health.next_due() == clock.now + 2.0
    health.down("web.1")
    assert health.next_due() is None
    off, *_ = make(interval=0)
    off.spawned("web.1", 100, 5006)
    answer(off, 200)
    assert off.next_due() is None


def test_active_check_backs_off_while_no_request_comes_and_a_request_resets_it():
    """Under the runner (it sees exits itself) the period doubles after each round
    without a request, up to idle_interval; a request brings back the base period."""
    clock, pool = Clock(), Pool()
    health = Health(pool, interval=2.0, idle_interval=10.0, clock=clock)
    health.spawned("web.1", 100, 5006)
    answer(health, 200)

    def rounds(n):
        periods = []
        for _ in range(n):
            clock.now = health.next_due()
            answer(health, True, kind="tcp")
            periods.append(health.next_due() - clock.now)
        return periods
    assert rounds(5) == [2, 4, 8, 10, 10]  # the first round counts as busy (no baseline)
    pool.backends["web.1"].routed += 1     # a request came
    assert rounds(2) == [2, 4]
    pool.backends["web.1"].inflight = 1    # one still in flight: busy
    assert rounds(2) == [2, 2]
    pool.backends["web.1"].inflight = 0
    health.down("web.1")                   # the rotation empties: back to the base period
    health.spawned("web.1", 101, 5006)
    answer(health, 200)
    assert health.next_due() == clock.now + 2.0
    assert make()[0].idle_interval == 2.0  # without idle_interval: no back-off


def test_removal_while_probing_keeps_it_out_even_if_the_probe_answers():
    health, pool, clock, changes = make()
    health.spawned("web.1", 100, 5006)
    [probe] = health.due()
    health.removing("web.1")
    health.result(probe, 200)
    assert health.in_rotation() == [] and pool.rotation == [] and changes == []
    health.spawned("web.1", 101, 5006)  # supervisord restarted it during the drain
    answer(health, 200)
    assert health.in_rotation() == [] and changes == []
    health.down("web.1")  # down does not undo removing
    assert health.targets["web.1"].phase == "leaving"
    health.gone("web.1")
    assert "web.1" not in pool.backends and health.targets == {}


def test_removing_a_replica_in_rotation_ignores_its_later_failures():
    health, pool, clock, changes = make()
    health.spawned("web.1", 100, 5006)
    answer(health, 200)
    health.removing("web.1")
    pool.connect_failed(pool.backends["web.1"], acquired=False)
    assert changes == [("web.1", 100, True)] and health.due() == []


def test_down_replica_is_not_probed_and_late_results_do_not_bring_it_back():
    health, pool, clock, changes = make()
    health.spawned("web.1", 100, 5006)
    [probe] = health.due()
    health.down("web.1")  # OOM-killed while booting
    health.result(probe, 200)
    assert health.in_rotation() == [] and health.next_due() is None


def test_served_since_spawn():
    health, pool, clock, _ = make()
    health.spawned("web.1", 100, 5006)
    assert not health.served_since_spawn("web.1")
    answer(health, 200)
    assert not health.served_since_spawn("web.1")
    pool.acquire(pool.backends["web.1"])
    assert health.served_since_spawn("web.1")
    health.spawned("web.1", 101, 5006)  # a new process: counted from now
    assert not health.served_since_spawn("web.1")


EVENTS = st.lists(st.tuples(
    st.sampled_from(["spawned", "down", "removing", "connect_failed", "run", "tick"]),
    st.sampled_from(["web.1", "web.2"]), st.sampled_from([100, 101]),
    st.sampled_from([None, 200, True, False])), max_size=50)


@hsettings(max_examples=200, deadline=None)
@given(EVENTS)
def test_rotation_is_always_what_health_decided(events):
    """Whatever happens, the pool's rotation is exactly the replicas Health has in, and a
    replica being removed is never in it."""
    health, pool, clock, _ = make()
    leaving = set()
    for what, name, pid, outcome in events:
        if what == "spawned":
            health.spawned(name, pid, 5006)
        elif what in ("down", "removing"):
            getattr(health, what)(name)
            if what == "removing":
                leaving.add(name)
        elif what == "connect_failed" and name in pool.backends:
            pool.connect_failed(pool.backends[name], acquired=False)
        elif what == "run":
            probes = health.due()
            when = health.next_due()  # everything due was handed out
            assert when is None or when > clock.now
            for p in probes:
                health.result(p, outcome if p.kind == "tcp" or outcome is not True else 200)
        else:
            clock.now += 1.0
        assert sorted(b.name for b in pool.rotation) == health.in_rotation()
        assert not leaving & set(health.in_rotation())


def test_driver_probes_a_real_socket_and_puts_the_replica_in_rotation():
    """The I/O part: http_probe against a loopback server that starts listening late."""
    async def main():
        pool = Pool()
        changes = []
        health = Health(pool, interval=0.05, on_change=lambda *a: changes.append(a))
        driver = HealthDriver(health, http_timeout=2.0, tcp_timeout=0.5, http=http_probe)
        driver.start()

        async def serve(reader, writer):
            await reader.readline()
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        import socket
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        health.spawned("web.1", 1, port)
        await asyncio.sleep(0.1)
        assert health.in_rotation() == []  # nothing listens yet: still probing
        sock.listen(8)
        server = await asyncio.start_server(serve, sock=sock)
        for _ in range(200):
            if health.in_rotation():
                break
            await asyncio.sleep(0.01)
        assert health.in_rotation() == ["web.1"] and changes == [("web.1", 1, True)]
        server.close()
        await server.wait_closed()
        for _ in range(200):  # the active check (TCP) finds the port closed
            if not health.in_rotation():
                break
            await asyncio.sleep(0.01)
        assert health.in_rotation() == [] and changes[-1] == ("web.1", 1, False)
        driver.stop()
        assert driver.task is None and not driver.probes

    asyncio.run(main())


# ─── CHECKS ─────────────────────────────────────────────────────────────────────────
def test_checks_gate_a_new_process_and_a_failure_keeps_it_out():
    from dashscale_local.checks import parse_checks
    health, pool, clock, changes = make()
    failed = []
    health.on_checks_failed = lambda *a: failed.append(a)
    assert health.checks_of("web.1") is None and health.checks_budget() == 0
    health.checks = parse_checks("WAIT=1\nTIMEOUT=2\nATTEMPTS=3\n/health\n/ Hello\n")
    assert health.checks_budget() == 3 * (1 + 2 * 2)
    health.spawned("web.1", 100, 5006)
    assert health.checks_of("web.1") == "pending"
    answer(health, 200)                      # it answers HTTP: now its checks, not traffic
    assert health.in_rotation() == [] and changes == []
    assert health.due() == [Probe("web.1", 100, 5006, "checks")]
    assert health.due() == []                # running
    health.result(Probe("web.1", 100, 5006, "checks"), None)
    assert health.in_rotation() == ["web.1"] and health.checks_of("web.1") == "passed"
    assert changes == [("web.1", 100, True)]
    # a process that fails its checks stays out and is not probed again
    health.spawned("web.2", 101, 5007)
    answer(health, 200)
    answer(health, "CHECKS:5: GET /: 'Hello' not in the response", kind="checks")
    assert health.in_rotation() == ["web.1"] and health.due() == []
    assert health.next_due() == clock.now + 2.0  # only the active check of web.1
    assert health.checks_of("web.2") == "failed: CHECKS:5: GET /: 'Hello' not in the response"
    assert failed == [("web.2", 101, "CHECKS:5: GET /: 'Hello' not in the response")]
    # back from an unhealthy spell: not checked again
    backend = pool.backends["web.1"]
    pool.acquire(backend)
    pool.connect_failed(backend)
    answer(health, 200)
    assert health.in_rotation() == ["web.1"] and health.checks_of("web.1") == "passed"


def test_driver_runs_the_checks_under_the_app_prefix():
    """The I/O part: the CHECKS requests reach the replica under /NAME/."""
    from dashscale_local.checks import parse_checks

    async def main():
        seen = []

        async def serve(reader, writer):
            line = await reader.readline()
            seen.append(line.split()[1].decode())
            body = b"all good" if seen[-1] == "/demo/health" else b"nope"
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        health = Health(Pool(), interval=0)
        health.checks = parse_checks("WAIT=0\nTIMEOUT=2\nATTEMPTS=1\n/health good\n")
        health.prefix = "/demo/"
        driver = HealthDriver(health, http_timeout=2.0, http=http_probe)
        driver.start()
        health.spawned("web.1", 1, port)
        for _ in range(300):
            if health.in_rotation():
                break
            await asyncio.sleep(0.01)
        driver.stop()
        server.close()
        await server.wait_closed()
        assert health.in_rotation() == ["web.1"] and health.checks_of("web.1") == "passed"
        assert "/demo/health" in seen

    asyncio.run(main())
