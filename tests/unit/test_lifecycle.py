"""The replica state machine (lifecycle.py), driven by fake observations on a fake clock:
no process is started (as honcho tests its manager)."""
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from dashscale_local.config import load_settings
from dashscale_local.lifecycle import (
    Answered, Event, Fatal, OomKilled, OutOfRotation, Pin, ProcessInfo, ReplicaRecord,
    Removing, Report, RestartRequested, ScheduleRestart, Settings, StartProbe, StartProcess,
    State, StopProcess, StopRun, Unhealthy, WatchMemory, from_supervisor, next_deadline,
    step, stop_verdict, supervisord_exit, tick)

MiB = 1024 * 1024
STOP = Settings(on_limit="stop")
RESTART = Settings(on_limit="restart")


class Replica:
    """One record, a fake clock and everything the machine said."""

    def __init__(self, name="web.1", type_="web", settings=STOP, now=0.0):
        self.r = ReplicaRecord(name, type_, port=5006, memory_limit=150 * MiB, spawned_at=now)
        self.settings, self.now, self.log = settings, now, []

    def see(self, obs, at=None):
        """step, then tick (as the runner does); the effects of both."""
        if at is not None:
            self.now = at
        self.r, effects = step(self.r, obs, self.now, self.settings)
        self.r, more = tick(self.r, self.now, self.settings)
        self.log += effects + more
        return effects + more

    def tick(self, at):
        self.now = at
        self.r, effects = tick(self.r, at, self.settings)
        self.log += effects
        return effects

    def sup(self, statename, pid=0, at=None, **kw):
        return self.see(ProcessInfo(statename, pid, wall=1000.0 + self.now, **kw), at)

    def up(self, pid=100, at=None):
        """STARTING → RUNNING → answers HTTP."""
        self.sup("STARTING", pid, at)
        self.sup("RUNNING", pid)
        return self.see(Answered(pid))

    def oom(self, at=None, served=True):
        return self.see(OomKilled(self.r.pid, time=1000.0 + (at or self.now),
                                  memory_bytes=151 * MiB, limit_bytes=150 * MiB,
                                  peak_bytes=152 * MiB, metric="pss", processes=2,
                                  reaction_s=0.12, served=served), at)


def of(effects, kind):
    return [e for e in effects if isinstance(e, kind)]


def lines(effects):
    return [e.line for e in of(effects, Report)]


def events(effects, kind=None):
    return [e.message for e in of(effects, Event) if kind in (None, e.kind)]


# ─── starting ───────────────────────────────────────────────────────────────────────
def test_start_running_then_ready_when_it_answers():
    x = Replica(now=10.0)
    effects = x.sup("STARTING", 100, at=10.2)
    assert effects == [WatchMemory("web.1", 100, 150 * MiB), StartProbe("web.1", 100, 5006)]
    assert (x.r.state, x.r.pid, x.r.ready, x.r.restarts) == (State.STARTING, 100, False, 0)
    assert x.sup("RUNNING", 100, at=11.2) == []
    assert x.r.state is State.RUNNING and not x.r.ready  # RUNNING is a timer, not readiness
    effects = x.see(Answered(100), at=11.5)
    assert x.r.ready and x.r.ready_after == pytest.approx(1.5)
    assert lines(effects) == ["web.1 ready on 127.0.0.1:5006 (pid 100, 1.50s)"]
    assert x.see(Answered(100)) == []  # once
    assert x.r.as_json()["state"] == "RUNNING" and x.r.as_json()["last_exit"] is None


def test_worker_is_ready_when_supervisord_says_running_and_is_never_probed():
    x = Replica("worker.1", "worker", settings=Settings(spread=True))
    effects = x.sup("STARTING", 7)
    assert of(effects, StartProbe) == [] and of(effects, Pin) == [Pin("worker.1", 7)]
    assert not x.r.ready
    assert lines(x.sup("RUNNING", 7)) == ["worker.1 running (pid 7)"]
    assert x.r.ready


def test_late_answer_from_an_old_process_is_ignored():
    x = Replica()
    x.up(100)
    x.sup("STARTING", 101)  # it was replaced meanwhile
    assert x.see(Answered(100)) == [] and not x.r.ready
    assert lines(x.see(Answered(101))) == ["web.1 back in rotation (pid 101)"]


def test_supervisord_states_outside_the_contract_are_stopped():
    assert from_supervisor("EXITED") is from_supervisor("UNKNOWN") is State.STOPPED
    assert {from_supervisor(s.value) for s in State if s is not State.OOMKILLED} \
        == set(State) - {State.OOMKILLED}
    x = Replica("worker.1", "worker")
    x.sup("STARTING", 5)
    x.sup("RUNNING", 5)
    x.sup("EXITED", 0, exitstatus=0)  # exit 0 is expected: supervisord leaves it down
    assert x.r.state is State.STOPPED and not x.r.ready


# ─── crashes ────────────────────────────────────────────────────────────────────────
def test_crash_after_running_is_restarted_by_supervisord_and_counted():
    x = Replica()
    x.up(100)
    effects = x.sup("EXITED", 0, exitstatus=1, exit_code=1, stop=1234.0)
    assert of(effects, OutOfRotation) == [OutOfRotation("web.1")]
    assert lines(effects) == ["web.1 exited with code 1 (exit status 1); supervisord restarts it"]
    assert events(effects, "crash") == ["web.1 exited with code 1: exit status 1"]
    assert x.r.last_exit == {"code": 1, "reason": "exit status 1", "time": 1234.0}
    assert x.r.state is State.STOPPED and not x.r.ready
    effects = x.sup("STARTING", 101)
    assert x.r.restarts == 1 and x.r.pid == 101
    assert events(effects) == ["web.1 restarted (pid 101)"]
    assert StartProbe("web.1", 101, 5006) in effects


def test_crash_between_two_polls_quotes_the_logged_signal_not_exit_0():
    """kill -9: supervisord restarted it before the next poll; the RPC's exitstatus is
    the new process's (0). The code comes from supervisord's log line."""
    x = Replica()
    x.up(100)
    effects = x.sup("STARTING", 101, exitstatus=0, exit_code=137, exit_signal="SIGKILL")
    assert x.r.restarts == 1
    assert x.r.last_exit["code"] == 137 and x.r.last_exit["reason"] == "killed by SIGKILL"
    assert events(effects, "crash") == ["web.1 (pid 100) exited: killed by SIGKILL"]
    y = Replica()
    y.up(100)
    y.sup("STARTING", 101, exitstatus=0)  # nothing logged: unknown, never "exit 0"
    assert y.r.last_exit["code"] is None and y.r.last_exit["reason"] == "exited"


@pytest.mark.parametrize("code, reason", [(3, "worker failed to boot"), (4, "app failed to load")])
def test_gunicorn_exit_3_or_4_while_starting_is_fatal_at_once(code, reason):
    """Exited too quickly: the RPC says exitstatus 0 (BACKOFF); the log says 3/4. FATAL
    at once, supervisord's retry stopped, the real code reported, the cause asked for."""
    x = Replica()
    x.sup("STARTING", 100)
    effects = x.sup("BACKOFF", 0, exitstatus=0, exit_code=code,
                    description="Exited too quickly (process log may have details)")
    assert x.r.state is State.FATAL and not x.r.ready
    assert StopProcess("web.1") in effects
    assert of(effects, Fatal) == [Fatal("web.1", code, reason)]
    assert events(effects, "fatal") == [f"web.1 failed to start (exit {code}: {reason})"]
    assert x.r.last_exit["code"] == code and x.r.last_exit["reason"] == reason
    assert "retrying" not in " ".join(lines(effects))
    # supervisord's view catches up: stopped, nothing more said, still FATAL
    for state in ("STOPPING", "STOPPED", "FATAL"):
        assert x.sup(state, 0) == [] and x.r.state is State.FATAL
    assert x.r.restarts == 0


def test_gunicorn_exit_after_startsecs_and_respawn_between_polls_is_fatal_too():
    x = Replica()
    x.sup("STARTING", 100)
    x.sup("RUNNING", 100)  # up for startsecs, but it never answered HTTP
    effects = x.sup("STARTING", 101, exit_code=4)  # exited 4, supervisord restarted it
    assert x.r.state is State.FATAL and StopProcess("web.1") in effects
    assert (x.r.pid, x.r.restarts) == (100, 0)  # the restart is suppressed, not adopted
    assert x.sup("STARTING", 101) == []          # the stop is under way
    x.sup("STOPPED", 0)
    # started again outside dashscale: stopped again, quietly
    assert of(x.sup("STARTING", 102), StopProcess) == [StopProcess("web.1")]
    assert x.r.state is State.FATAL
    # EXITED with the code in the RPC itself (no log line needed)
    y = Replica()
    y.sup("RUNNING", 100)
    effects = y.sup("EXITED", 0, exitstatus=3)
    assert of(effects, Fatal) == [Fatal("web.1", 3, "worker failed to boot")]
    assert StopProcess("web.1") in effects and y.r.state is State.FATAL


def test_fatal_replica_restarts_only_on_request():
    x = Replica()
    x.sup("STARTING", 100)
    x.sup("BACKOFF", 0, exit_code=4)
    effects = x.see(RestartRequested(), at=50.0)
    assert effects == [OutOfRotation("web.1"), StopProcess("web.1"), StartProcess("web.1")]
    # a poll before the stop and start ran: supervisord's old state, the old logged exit
    assert x.sup("FATAL", 0, exit_code=4) == [] and x.r.state is State.FATAL
    assert not x.r.held
    x.sup("STARTING", 101)
    assert x.r.state is State.STARTING and x.r.restarts == 1 and not x.r.held
    assert lines(x.see(Answered(101), at=51.0)) == [
        "web.1 ready on 127.0.0.1:5006 (pid 101, 1.00s)"]
    x.sup("RUNNING", 101)
    # It served, then exited 4 (final for supervisord): restarted, as k8s restarts a pod.
    effects = x.sup("EXITED", 0, exitstatus=4, exit_code=4)
    assert of(effects, Fatal) == [] and not x.r.held and StartProcess("web.1") in effects
    assert lines(effects) == ["web.1 exited with code 4; restarting it"]
    x.sup("STARTING", 102)
    assert x.r.state is State.STARTING and x.r.restarts == 2
    # This one never answers and exits 4: it cannot boot, FATAL.
    effects = x.sup("BACKOFF", 0, exit_code=4)
    assert of(effects, Fatal) == [Fatal("web.1", 4, "app failed to load")] and x.r.held


def test_the_logs_verdict_decides_over_the_exit_code():
    """gunicorn ≥24 (or --preload) exits 1 when the app cannot load; a command that is
    not gunicorn may exit 3 for its own reasons: the runner's reading of the log wins."""
    x = Replica()
    x.sup("STARTING", 100)
    effects = x.sup("BACKOFF", 0, exit_code=1, load_code=4)
    assert of(effects, Fatal) == [Fatal("web.1", 1, "app failed to load")]
    y = Replica()
    y.sup("STARTING", 100)
    assert of(y.sup("BACKOFF", 0, exit_code=3, load_code=0), Fatal) == []
    assert y.r.state is State.BACKOFF


def test_backoff_while_starting_then_fatal_after_retries():
    desc = "Exited too quickly (process log may have details)"
    x = Replica()
    reported = []
    for pid in (100, 101, 102):
        x.sup("STARTING", pid)
        reported += lines(x.sup("BACKOFF", 0, exit_code=1, description=desc))
        assert x.r.state is State.BACKOFF
        assert x.sup("BACKOFF", 0, exit_code=1, description=desc) == []  # once per process
    assert reported == [f"web.1 exited while starting with code 1 ({desc}); retrying"] * 3
    effects = x.sup("FATAL", 0, exitstatus=0, exit_code=1, description=desc)
    assert x.r.state is State.FATAL and of(effects, Fatal) == [Fatal("web.1", 1, desc)]
    assert x.sup("FATAL", 0, exit_code=1, description=desc) == []  # reported once
    assert x.r.restarts == 2
    assert of(effects, StopProcess) == []  # supervisord gave up by itself


def test_fatal_with_no_logged_code_never_claims_exit_0():
    x = Replica()
    x.sup("STARTING", 100)
    x.sup("BACKOFF", 0, description="spawn error")
    effects = x.sup("FATAL", 0, exitstatus=0, description="spawn error")
    assert of(effects, Fatal) == [Fatal("web.1", None, "spawn error")]
    assert events(effects, "fatal") == ["web.1 failed to start (spawn error)"]


def test_requested_restart_is_not_a_crash():
    x = Replica()
    x.up(100)
    x.see(RestartRequested(), at=30.0)
    assert x.r.state is State.STOPPING and x.r.restarting and not x.r.ready
    x.sup("STOPPING", 100)
    x.sup("STOPPED", 0)
    effects = x.sup("STARTING", 101)
    assert x.r.restarts == 1 and x.r.last_exit is None and not x.r.restarting
    assert events(effects, "crash") == [] and x.r.spawned_at == 30.0


# ─── OOM kills ──────────────────────────────────────────────────────────────────────
def test_oom_kill_is_reported_and_held_down_when_supervisord_respawns():
    x = Replica()
    x.up(100)
    effects = x.oom(at=20.0)
    assert x.r.state is State.OOMKILLED and not x.r.ready
    assert (x.r.pid, x.r.restarts, x.r.oom_kills) == (100, 0, 1)
    assert of(effects, OutOfRotation) == [OutOfRotation("web.1")]
    assert lines(effects) == [
        "!!! web.1 OOMKilled: pss 151 MiB reached its limit 150 MiB; killed all 2 of its "
        "processes (exit 137); it stays down until `dashscale restart web.1`"]
    assert events(effects, "oomkill") == ["web.1 OOMKilled: pss 151 MiB reached its limit 150 MiB"]
    ex = x.r.last_exit
    assert (ex["code"], ex["reason"], ex["signal"], ex["pid"]) == (137, "OOMKilled", "SIGKILL", 100)
    assert (ex["memory_bytes"], ex["peak_bytes"], ex["limit_bytes"]) == \
        (151 * MiB, 152 * MiB, 150 * MiB)
    assert "restart_at" not in ex
    # the guard told supervisord to stop first: nothing to do
    assert x.sup("RUNNING", 100) == []  # the killed process, not yet reaped
    assert x.sup("STOPPING", 100) == [] and x.sup("STOPPED", 0) == []
    # supervisord (or supervisorctl) starts it anyway: stopped again, once per process
    effects = x.sup("STARTING", 200, at=21.0)
    assert of(effects, StopProcess) == [StopProcess("web.1")]
    assert "started again behind the guard's back (pid 200)" in lines(effects)[0]
    assert x.sup("RUNNING", 200, at=22.0) == []
    # the stop did not take: tried again after stop_timeout + 5 s
    assert of(x.sup("RUNNING", 200, at=36.5), StopProcess) == [StopProcess("web.1")]
    assert x.r.state is State.OOMKILLED and (x.r.pid, x.r.restarts) == (100, 0)
    assert x.see(Answered(200)) == [] and x.tick(10_000.0) == []  # stop policy: stays down
    # until `dashscale restart`
    x.sup("STOPPED", 0)
    assert x.see(RestartRequested(), at=40.0) == [
        OutOfRotation("web.1"), StopProcess("web.1"), StartProcess("web.1")]
    x.sup("STARTING", 300)
    assert (x.r.state, x.r.restarts, x.r.oom_kills) == (State.STARTING, 1, 1)
    assert x.r.last_exit["reason"] == "OOMKilled"  # the history stays


def test_oom_kill_while_starting_says_the_limit_may_be_too_small():
    x = Replica()
    x.sup("STARTING", 100)
    assert "while starting (the limit may be too small for this app)" in lines(x.oom())[0]


def test_crashloop_backoff_delays_double_to_the_cap_and_reset_after_healthy():
    x = Replica(settings=RESTART)
    x.up(100, at=0.0)
    t, pid, delays = 5.0, 100, []
    for _ in range(8):
        effects = x.oom(at=t)
        assert "it restarts with back-off" in lines(effects)[0]
        [sched] = of(effects, ScheduleRestart)
        delay = sched.at - t
        delays.append(delay)
        assert lines(effects)[1] == f"web.1 restarts in {delay:g}s (CrashLoopBackOff)"
        assert events(effects, "backoff") == [f"web.1 restarts in {delay:g}s (back-off)"]
        assert x.r.last_exit["restart_delay_s"] == delay
        assert x.r.last_exit["restart_at"] == x.r.last_exit["time"] + delay
        assert next_deadline([x.r]) == sched.at
        assert x.tick(sched.at - 0.001) == [] and x.r.state is State.OOMKILLED
        assert x.tick(sched.at) == [OutOfRotation("web.1"), StopProcess("web.1"),
                                    StartProcess("web.1")]
        pid += 1
        x.up(pid, at=sched.at + 0.5)
        assert x.r.restarts == len(delays) and x.r.state is State.RUNNING
        t = sched.at + 2.0  # killed again soon after
    assert delays == [10, 20, 40, 80, 160, 300, 300, 300]
    x.oom(at=t + 598.0)  # up for 600 s (since its restart): the first delay again
    assert x.r.crashloop_delay == 10
    y = Replica(settings=RESTART)
    y.up(100, at=0.0)
    y.oom(at=1.0)
    y.tick(11.0)
    y.up(101, at=11.0)
    y.oom(at=11.0 + 599.0)  # not quite 600 s: doubled
    assert y.r.crashloop_delay == 20


def test_restart_request_cancels_the_backoff_timer():
    x = Replica(settings=Settings(on_limit="restart", backoff_initial=3))
    x.up(100)
    x.oom(at=1.0)
    assert x.r.restart_at == 4.0
    x.see(RestartRequested(), at=2.0)
    x.up(101, at=2.5)
    assert x.r.restart_at is None and next_deadline([x.r]) is None
    assert x.tick(5.0) == [] and x.r.restarts == 1


def test_every_web_replica_oomkilled_while_idle_stops_the_run():
    web = [Replica(f"web.{i}") for i in (1, 2)]
    worker = Replica("worker.1", "worker")
    for x in web:
        x.sup("STARTING", 100)
        x.oom(served=False)
    verdict = stop_verdict([x.r for x in web + [worker]])
    assert verdict == StopRun("every web replica was OOMKilled while starting: the limit "
                              "150 MiB is too small for this app")
    served = Replica("web.3")
    served.up(100)
    served.oom(served=True)  # it had served: a real load, not a limit below idle memory
    assert stop_verdict([x.r for x in web] + [served.r]) is None
    assert stop_verdict([worker.r]) is None


def test_removing_replica_takes_no_late_answer_and_no_backoff_restart():
    x = Replica(settings=RESTART)
    x.sup("STARTING", 100)
    assert x.see(Removing()) == []
    assert x.r.removing and x.see(Answered(100)) == [] and not x.r.ready
    y = Replica(settings=RESTART)
    y.up(100)
    y.oom(at=1.0)
    y.see(Removing())
    assert y.r.restart_at is None and y.tick(1000.0) == []


def test_unhealthy_takes_it_out_until_it_answers_again():
    x = Replica()
    x.up(100)
    effects = x.see(Unhealthy(100))
    assert not x.r.ready
    assert events(effects) == ["web.1 out of rotation (refused or did not answer)"]
    assert x.see(Unhealthy(99)) == []
    assert lines(x.see(Answered(100))) == ["web.1 back in rotation (pid 100)"]


# ─── helpers ────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("line, expected", [
    ("2026-12-07 01:02:03,456 WARN exited: web.1 (exit status 3; not expected)",
     ("web.1", 3, None)),
    ("2026-12-07 01:02:03,456 INFO exited: worker.2 (exit status 0; expected)",
     ("worker.2", 0, None)),
    ("... WARN exited: web.10 (terminated by SIGKILL; not expected)", ("web.10", 137, "SIGKILL")),
    ("... WARN exited: web.1 (terminated by SIGSEGV (core dumped); not expected)",
     ("web.1", 139, "SIGSEGV")),
    ("... INFO stopped: web.1 (terminated by SIGTERM)", None),
    ("... INFO spawned: 'web.1' with pid 123", None),
])
def test_supervisord_exit_lines(line, expected):
    assert supervisord_exit(line) == expected


def test_settings_from_the_packaged_defaults(tmp_path):
    s = Settings.from_mapping(load_settings(str(tmp_path)))
    assert s == Settings(on_limit="stop", backoff_initial=10, backoff_max=300, backoff_reset=600,
                         stop_timeout=10, spread=False)
    assert Settings.from_mapping(load_settings(str(tmp_path), {"on_limit": "restart",
                                                               "spread": "yes"})).spread


def test_process_info_from_rpc():
    info = {"statename": "BACKOFF", "pid": 0, "exitstatus": 0, "description": "x", "stop": 5}
    assert ProcessInfo.from_rpc(info, 9.0, (4, None)) == \
        ProcessInfo("BACKOFF", 0, 0, "x", 5, 9.0, 4)


# ─── properties ─────────────────────────────────────────────────────────────────────
STATENAMES = ["STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL",
              "UNKNOWN"]
observation = st.one_of(
    st.builds(ProcessInfo, st.sampled_from(STATENAMES), st.sampled_from([0, 100, 101, 102]),
              st.sampled_from([0, 1, 3, 4, -1]),
              exit_code=st.sampled_from([None, 0, 1, 3, 4, 137])),
    st.builds(OomKilled, st.sampled_from([100, 101]), st.just(1.0),
              served=st.booleans()),
    st.builds(Answered, st.sampled_from([100, 101, 102])),
    st.builds(Unhealthy, st.sampled_from([100, 101])),
    st.just(RestartRequested()),
    st.just("tick"),
)


def _run(obs_list, gaps, settings):
    r = ReplicaRecord("web.1", "web", 5006, spawned_at=0.0)
    now, seen = 0.0, []
    for obs, gap in zip(obs_list, gaps):
        now += gap
        before = r
        if obs == "tick":
            r, effects = tick(r, now, settings)
        else:
            r, effects = step(r, obs, now, settings)
        seen.append((before, obs, r, effects, now))
    return seen


@hsettings(max_examples=200, deadline=None)
@given(st.lists(observation, max_size=40), st.lists(st.floats(0, 400), min_size=40, max_size=40),
       st.sampled_from([STOP, RESTART]))
def test_any_observation_sequence_keeps_the_invariants(obs_list, gaps, settings):
    for before, obs, r, effects, now in _run(obs_list, gaps, settings):
        assert isinstance(r.state, State)
        assert r.restarts >= before.restarts and r.oom_kills >= before.oom_kills
        assert not r.ready or r.state in (State.STARTING, State.RUNNING)
        if r.crashloop_delay is not None:
            assert settings.backoff_initial <= r.crashloop_delay <= settings.backoff_max
        for e in of(effects, Fatal):
            # the real code: the logged one, else the RPC's only where it is real (EXITED)
            real = obs.exit_code if obs.exit_code is not None else (
                obs.exitstatus if obs.statename == "EXITED" and obs.exitstatus != -1 else None)
            assert e.code == real
        if before.state is State.OOMKILLED and r.state is not State.OOMKILLED:
            # it leaves OOMKILLED only through a restart: asked for, or the back-off's
            restarted = obs == RestartRequested() or (
                obs == "tick" and settings.on_limit == "restart" and now >= before.restart_at)
            assert restarted and r.state is State.STOPPING
            assert StartProcess("web.1") in effects
        if isinstance(obs, OomKilled):
            assert r.state is State.OOMKILLED and r.oom_kills == before.oom_kills + 1


@hsettings(max_examples=100, deadline=None)
@given(st.lists(observation.filter(lambda o: o not in ("tick", RestartRequested())), max_size=40))
def test_an_oomkilled_replica_never_runs_again_without_a_restart(obs_list):
    seen = _run([OomKilled(100, 1.0)] + obs_list, [1.0] * (len(obs_list) + 1), STOP)
    assert all(r.state is State.OOMKILLED and not r.ready for _, _, r, _, _ in seen)
