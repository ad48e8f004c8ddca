"""A replica's lifecycle as a state machine, without I/O (sans-IO, as h11 is).

``step(record, observation, now, settings)`` turns one observation (supervisord's
process info, an OOM kill by the memory guard, a readiness answer, a request) into a
new ``ReplicaRecord`` and a list of effects, plain data the runner carries out.
``tick(record, now, settings)`` takes the time-driven decisions (CrashLoopBackOff) on
the monitor's tick, as gunicorn's arbiter does in ``manage_workers``. Nothing here
sleeps, reads a clock or talks to a process: ``now`` is monotonic seconds, passed in.
See docs/lifecycle.md for the states, the transitions and how the runner drives it.
"""
import enum
import re
import signal
from dataclasses import dataclass, fields, make_dataclass, replace
from typing import Optional, Tuple

from .failure import GUNICORN_EXIT
from .sizes import format_size


class State(str, enum.Enum):
    """What `status --json` shows (a str: it serialises as its name)."""
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    BACKOFF = "BACKOFF"
    FATAL = "FATAL"
    OOMKILLED = "OOMKILLED"

    def __str__(self):
        return self.value


UP = (State.STARTING, State.RUNNING)
_SUPERVISOR_UP = ("STARTING", "RUNNING", "BACKOFF")  # supervisord will run (or retry) it


def from_supervisor(statename):
    """supervisord's state name as one of ours: EXITED and UNKNOWN (nothing runs) → STOPPED."""
    try:
        return State(statename)
    except ValueError:
        return State.STOPPED


# ─── settings, record, observations, effects ─────────────────────────────────────────
@dataclass(frozen=True)
class Settings:
    on_limit: str = "stop"          # stop | restart (CrashLoopBackOff)
    backoff_initial: float = 10.0
    backoff_max: float = 300.0
    backoff_reset: float = 600.0    # healthy this long: the next delay is the first again
    stop_timeout: float = 10.0      # a hold-down stop is repeated after stop_timeout + 5 s
    spread: bool = False

    @classmethod
    def from_mapping(cls, settings):
        """From the runner's config.Settings (typed; its dict-style access serves too)."""
        return cls(**{f.name: settings[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class ReplicaRecord:
    """What the runner knows about one replica. ``last_exit`` is a dict for `status`,
    never changed in place (a new dict on every change)."""
    name: str
    type: str
    port: int
    memory_limit: int = 0
    state: State = State.STOPPED
    pid: Optional[int] = None         # the current (or last) process; kept while OOMKILLED
    ready: bool = False               # web: answers HTTP; others: supervisord RUNNING
    served_pid: Optional[int] = None  # the last process that answered HTTP (web)
    restarts: int = 0
    oom_kills: int = 0
    last_exit: Optional[dict] = None
    spawned_at: Optional[float] = None   # when dashscale (re)started it (monotonic)
    ready_after: Optional[float] = None  # seconds from spawned_at to the first answer
    restarting: bool = False          # a restart we asked for: the exit is not a crash
    removing: bool = False            # being drained and removed: never back in rotation
    held: bool = False                # down until restarted through dashscale (OOM, exit 3/4)
    held_pid: Optional[int] = None    # the process a hold-down stop was issued for
    held_at: Optional[float] = None
    down_at: Optional[float] = None   # when it was OOM-killed (monotonic)
    killed_idle: bool = False         # OOM-killed before it served a request
    crashloop_delay: Optional[float] = None
    restart_at: Optional[float] = None   # CrashLoopBackOff: restart due (monotonic)
    fatal_reported: bool = False
    backoff_reported: Optional[int] = None  # pid whose BACKOFF was reported

    def as_json(self):
        return {"name": self.name, "type": self.type, "state": self.state.value,
                "pid": self.pid, "port": self.port, "ready": self.ready,
                "memory_limit_bytes": self.memory_limit, "restarts": self.restarts,
                "oom_kills": self.oom_kills, "last_exit": self.last_exit}


@dataclass(frozen=True)
class ProcessInfo:
    """supervisord's getProcessInfo for the replica, plus the exit the runner read in
    supervisord's log ("exited: web.1 (exit status 3; not expected)", see
    ``supervisord_exit``): the RPC reports exitstatus 0 after an exit that was too quick
    (BACKOFF, FATAL) and once the next process is spawned; the log line is exact."""
    statename: str
    pid: int = 0
    exitstatus: int = 0
    description: str = ""
    stop: float = 0.0                 # wall time of the last exit (0: never)
    wall: float = 0.0                 # wall time of the poll
    exit_code: Optional[int] = None   # from the log: the status, or 128 + signal number
    exit_signal: Optional[str] = None
    # gunicorn's verdict from the replica's own log (failure.load_failure): 3/4 when this
    # run could not boot/load the app (also when gunicorn ≥24 or --preload exit 1), 0 when
    # it says otherwise or the command is not gunicorn; None: not read, the code decides.
    load_code: Optional[int] = None

    @classmethod
    def from_rpc(cls, info, wall, logged_exit=None, load_code=None):
        code, sig = logged_exit or (None, None)
        return cls(info["statename"], info.get("pid") or 0, info.get("exitstatus") or 0,
                   info.get("description") or "", info.get("stop") or 0.0, wall, code, sig,
                   load_code)


@dataclass(frozen=True)
class OomKilled:
    """The memory guard killed the replica's tree (its on_kill info), and whether the
    proxy had routed a request to this process (Health.served_since_spawn)."""
    pid: Optional[int]
    time: float
    memory_bytes: int = 0
    limit_bytes: int = 0
    peak_bytes: int = 0
    metric: str = "memory"
    processes: int = 0
    reaction_s: float = 0.0
    served: bool = False

    @classmethod
    def from_guard(cls, info, served):
        return cls(info.get("pid"), info.get("time", 0.0), info.get("memory_bytes", 0),
                   info.get("limit_bytes", 0), info.get("peak_bytes") or 0,
                   info.get("metric", "memory"), len(info.get("pids") or []),
                   info.get("reaction_s", 0.0), served)


def _plain(name, fields, doc):
    """A frozen dataclass ``name(*fields)``: observations and effects are plain data."""
    return make_dataclass(name, fields.split(), frozen=True,
                          namespace={"__doc__": doc, "__module__": __name__})


# Observations besides ProcessInfo and OomKilled.
Answered = _plain("Answered", "pid", "Health: the process answered HTTP; it is in rotation.")
Unhealthy = _plain("Unhealthy", "pid", "Health: it refused a connect or did not answer; "
                                       "out of rotation, re-probed.")
RestartRequested = _plain("RestartRequested", "", "`dashscale restart` (not rolling).")
Removing = _plain("Removing", "", "Scale-down or roll: it is drained, then removed.")

# Effects: what the runner does, in order.
Report = _plain("Report", "line", "A system line for the terminal.")
Event = _plain("Event", "kind message", "An event for status and the dashboard.")
StopProcess = _plain("StopProcess", "name", "supervisord: stopProcess.")
StartProcess = _plain("StartProcess", "name", "supervisord: startProcess.")
StartProbe = _plain("StartProbe", "name pid port", "A new web process: Health.spawned().")
OutOfRotation = _plain("OutOfRotation", "name", "Health.down(): not serving, not probed "
                                                "until the next StartProbe.")
WatchMemory = _plain("WatchMemory", "name pid limit", "MemoryGuard.watch().")
Pin = _plain("Pin", "name pid", "--spread: pin the process tree to the replica's CPUs.")
ScheduleRestart = _plain("ScheduleRestart", "name at", "Run tick() at ``at`` (monotonic): "
                                                       "a CrashLoopBackOff restart is due.")
Fatal = _plain("Fatal", "name code reason", "It cannot start: say so, with the cause quoted "
                                            "from its log; code is the real exit code, "
                                            "None when nobody knows it.")
StopRun = _plain("StopRun", "cause", "Nothing can ever serve: stop the run (a usage error).")


# ─── transitions ─────────────────────────────────────────────────────────────────────
def step(record, observation, now, settings):
    """(new record, [effects]) for one observation at monotonic time ``now``."""
    handler = _HANDLERS[type(observation)]
    return handler(record, observation, now, settings)


def tick(record, now, settings):
    """Time-driven decisions: schedule and carry out CrashLoopBackOff restarts. Call it
    on every monitor pass and after every step."""
    if record.state is not State.OOMKILLED or record.removing or settings.on_limit != "restart":
        return record, []
    if record.restart_at is None:
        return _schedule_backoff(record, settings)
    if now >= record.restart_at:
        return _restart(record, now)
    return record, []


def stop_verdict(records):
    """A StopRun when every web replica was OOM-killed before serving anything."""
    web = [r for r in records if r.type == "web"]
    if web and all(r.state is State.OOMKILLED and r.killed_idle for r in web):
        return StopRun(f"every web replica was OOMKilled while starting: the limit "
                       f"{format_size(web[0].memory_limit)} is too small for this app")
    return None


def next_deadline(records):
    """The earliest due restart (monotonic), or None: the monitor sleeps no longer."""
    return min((r.restart_at for r in records if r.restart_at is not None), default=None)


def _follow(r, info, now, settings):
    """Follow supervisord's view: a new pid, an exit, a give-up."""
    if r.held:
        return _hold(r, info, now, settings)
    effects = []
    state, pid = from_supervisor(info.statename), info.pid or None
    code, sig = _exit_of(info)
    exited = info.statename in ("EXITED", "BACKOFF", "FATAL")
    respawned = pid is not None and r.pid is not None and pid != r.pid
    load = info.load_code if info.load_code is not None else \
        (code if code in GUNICORN_EXIT else None)
    # While a restart we asked for is under way, the logged exit may be the old one's.
    if (exited or respawned) and load in GUNICORN_EXIT and not r.restarting \
            and not r.removing and r.state is not State.FATAL:
        if r.served_pid != r.pid:  # it never served: it cannot boot
            return _halt(r, info, code, load, now)
        if info.statename == "EXITED" and r.state in UP:
            # Final for supervisord (exitcodes), not for a replica that has served:
            # restart it as Kubernetes restarts a pod.
            effects = [StartProcess(r.name),
                       Report(f"{r.name} exited{_code_text(code)}; restarting it")]
    if pid and pid != r.pid:
        if r.pid is not None:
            r = replace(r, restarts=r.restarts + 1)
            if r.state in UP and not r.restarting:
                # It died and supervisord restarted it between two polls.
                reason = _reason(code, sig, "")
                r = replace(r, last_exit=_exit(code, sig, reason, info))
                effects.append(Event("crash", f"{r.name} (pid {r.pid}) exited: {reason}"))
            effects.append(Event("restart", f"{r.name} restarted (pid {pid})"))
        r = replace(r, pid=pid, ready=False, restarting=False,
                    spawned_at=r.spawned_at if r.spawned_at is not None else now)
        effects.append(WatchMemory(r.name, pid, r.memory_limit))
        if r.type == "web":
            effects.append(StartProbe(r.name, pid, r.port))
        if settings.spread:
            effects.append(Pin(r.name, pid))
    if r.type != "web" and r.ready != (state is State.RUNNING):
        r = replace(r, ready=state is State.RUNNING)  # not HTTP: up once startsecs passed
        if r.ready:
            effects.append(Report(f"{r.name} running (pid {pid})"))
    if state not in UP and r.ready:
        r = replace(r, ready=False)
        effects.append(OutOfRotation(r.name))
    if exited and r.state in UP:
        reason = _reason(code, sig, info.description if info.statename != "EXITED" else "")
        r = replace(r, last_exit=_exit(code, sig, reason, info))
        effects.append(Event("crash", f"{r.name} exited{_code_text(code)}: {reason}"))
        if info.statename == "EXITED" and not any(isinstance(e, StartProcess) for e in effects):
            effects.append(Report(f"{r.name} exited{_code_text(code)} ({reason}); "
                                  "supervisord restarts it"))
    if state is State.BACKOFF and r.backoff_reported != r.pid:
        reason = _reason(code, sig, info.description)
        r = replace(r, backoff_reported=r.pid)
        effects.append(Report(f"{r.name} exited while starting{_code_text(code)} ({reason}); "
                              "retrying"))
    if state is State.FATAL and not r.fatal_reported:
        reason = _reason(code, sig, info.description)
        r = replace(r, fatal_reported=True)
        effects += _fatal_effects(r.name, code, reason)
    if state in UP:
        r = replace(r, fatal_reported=False)
    return replace(r, state=state), effects


def _halt(r, info, code, load, now):
    """gunicorn exit 3/4: it cannot boot; retrying only repeats it. FATAL at once,
    supervisord's retry (or its restart) stopped."""
    reason = GUNICORN_EXIT[load]
    r = replace(r, state=State.FATAL, ready=False, held=True, held_pid=info.pid or 0,
                held_at=now, fatal_reported=True, restart_at=None,
                last_exit=_exit(code, None, reason, info))
    effects = [OutOfRotation(r.name)]
    if info.statename in _SUPERVISOR_UP + ("EXITED",):  # EXITED: about to be restarted
        effects.append(StopProcess(r.name))
    return r, effects + _fatal_effects(r.name, code, reason)


def _hold(r, info, now, settings):
    """OOMKILLED, or FATAL after exit 3/4: whatever starts it outside dashscale
    (supervisord's autorestart after a lost race, supervisorctl) is stopped again."""
    if info.statename not in _SUPERVISOR_UP:
        return (replace(r, held_pid=None) if info.statename != "STOPPING" else r), []
    pid = info.pid or 0
    retry = r.held_at is not None and now - r.held_at >= settings.stop_timeout + 5
    if pid == r.held_pid and not retry:
        return r, []
    r = replace(r, held_pid=pid, held_at=now)
    effects = [StopProcess(r.name)]
    if r.state is State.OOMKILLED:
        effects += [Report(f"{r.name} was started again behind the guard's back "
                           f"(pid {pid or '-'}); stopped it: an OOMKILLED replica restarts "
                           "only through dashscale"),
                    Event("oomkill", f"{r.name}: stopped a restart by supervisord")]
    else:
        effects.append(Event("fatal", f"{r.name}: stopped a restart by supervisord"))
    return r, effects


def _oom_killed(r, oom, now, settings):
    was_ready = r.ready
    r = replace(r, state=State.OOMKILLED, ready=False, held=True, held_pid=oom.pid,
                held_at=now, down_at=now, oom_kills=r.oom_kills + 1, killed_idle=not oom.served,
                restarting=False, restart_at=None,
                last_exit={"code": 137, "reason": "OOMKilled", "signal": "SIGKILL",
                           "time": oom.time, "pid": oom.pid, "metric": oom.metric,
                           "memory_bytes": oom.memory_bytes, "peak_bytes": oom.peak_bytes,
                           "limit_bytes": oom.limit_bytes or r.memory_limit,
                           "reaction_s": round(oom.reaction_s, 4)})
    used, limit = format_size(oom.memory_bytes), format_size(r.last_exit["limit_bytes"])
    when = "" if was_ready else " while starting (the limit may be too small for this app)"
    then = (f"it stays down until `dashscale restart {r.name}`" if settings.on_limit == "stop"
            else "it restarts with back-off")
    return r, [OutOfRotation(r.name),
               Report(f"!!! {r.name} OOMKilled{when}: {oom.metric} {used} reached its limit "
                      f"{limit}; killed all {oom.processes} of its processes (exit 137); {then}"),
               Event("oomkill",
                     f"{r.name} OOMKilled: {oom.metric} {used} reached its limit {limit}")]


def _schedule_backoff(r, settings):
    """Kubernetes CrashLoopBackOff: initial, doubling to the cap; the first delay again
    once the process had been up for backoff_reset."""
    up_for = (r.down_at or 0.0) - (r.spawned_at or 0.0)
    if r.crashloop_delay is None or up_for >= settings.backoff_reset:
        delay = min(settings.backoff_initial, settings.backoff_max)
    else:
        delay = min(r.crashloop_delay * 2, settings.backoff_max)
    at = (r.down_at or 0.0) + delay
    last_exit = dict(r.last_exit or {}, restart_delay_s=delay)
    if "time" in last_exit:
        last_exit["restart_at"] = last_exit["time"] + delay
    r = replace(r, crashloop_delay=delay, restart_at=at, last_exit=last_exit)
    return r, [Report(f"{r.name} restarts in {delay:g}s (CrashLoopBackOff)"),
               Event("backoff", f"{r.name} restarts in {delay:g}s (back-off)"),
               ScheduleRestart(r.name, at)]


def _restart(r, now, *_):
    """Stop (if anything runs) and start again; the next pid is not a crash."""
    r = replace(r, state=State.STOPPING, ready=False, restarting=True, spawned_at=now,
                held=False, held_pid=None, restart_at=None)
    return r, [OutOfRotation(r.name), StopProcess(r.name), StartProcess(r.name)]


def _answered(r, obs, now, settings):
    if obs.pid != r.pid or r.held or r.removing or r.ready or r.state not in UP:
        return r, []  # a late answer from a process that is gone, held down or leaving
    effects = [Pin(r.name, r.pid)] if settings.spread else []  # again: workers forked
    if r.ready_after is None and r.spawned_at is not None:
        r = replace(r, ready=True, served_pid=r.pid, ready_after=now - r.spawned_at)
        effects.append(Report(f"{r.name} ready on 127.0.0.1:{r.port} "
                              f"(pid {r.pid}, {r.ready_after:.2f}s)"))
    else:
        r = replace(r, ready=True, served_pid=r.pid)
        effects.append(Report(f"{r.name} back in rotation (pid {r.pid})"))
    return r, effects


def _unhealthy(r, obs, now, settings):
    if obs.pid != r.pid or r.held:
        return r, []
    return replace(r, ready=False), [
        Report(f"{r.name} out of rotation: it refused a connection or did not answer in "
               "time; probing until it serves again"),
        Event("unhealthy", f"{r.name} out of rotation (refused or did not answer)")]


def _removing(r, *_):
    """The runner also calls Health.removing: out of rotation for good."""
    return replace(r, removing=True, ready=False, restart_at=None), []


_HANDLERS = {ProcessInfo: _follow, OomKilled: _oom_killed, Answered: _answered,
             Unhealthy: _unhealthy, RestartRequested: lambda r, o, now, s: _restart(r, now),
             Removing: _removing}


# ─── exit codes ──────────────────────────────────────────────────────────────────────
def _exit_of(info):
    """(code, signal name) of the last exit: the logged one, else the RPC's exitstatus
    where it is real (EXITED; -1 = a signal, which one unknown)."""
    if info.exit_code is not None:
        return info.exit_code, info.exit_signal
    if info.statename == "EXITED":
        return (None, "a signal") if info.exitstatus == -1 else (info.exitstatus, None)
    return None, None


def _reason(code, sig, description):
    if code in GUNICORN_EXIT:
        return GUNICORN_EXIT[code]
    if sig:
        return f"killed by {sig}"
    return description or ("exited" if code is None else f"exit status {code}")


def _code_text(code):
    return "" if code is None else f" with code {code}"


def _exit(code, sig, reason, info):
    ex = {"code": code, "reason": reason, "time": info.stop or info.wall}
    if sig and sig != "a signal":
        ex["signal"] = sig
    return ex


def _fatal_effects(name, code, reason):
    why = f"exit {code}: {reason}" if code is not None else reason
    return [Fatal(name, code, reason), Event("fatal", f"{name} failed to start ({why})")]


_EXITED = re.compile(r"exited: (\S+) \((?:exit status (\d+)|terminated by (SIG[A-Z0-9]+))")


def supervisord_exit(line) -> Optional[Tuple[str, int, Optional[str]]]:
    """(name, code, signal) from a supervisord log line such as ``WARN exited: web.1
    (exit status 3; not expected)``; a signal is reported as 128 + its number, as a
    shell (and Kubernetes) does. None for any other line."""
    m = _EXITED.search(line)
    if m is None:
        return None
    if m.group(2) is not None:
        return m.group(1), int(m.group(2)), None
    sig = m.group(3)
    number = getattr(signal, sig, None)
    return m.group(1), (128 + int(number) if number is not None else None), sig
