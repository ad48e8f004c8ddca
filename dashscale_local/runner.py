"""The controller behind `dashscale start`: wiring, the effects executor and formation
changes. What happens to a replica is decided by lifecycle.py (its state machine) and
what is in the proxy's rotation by health.py; the runner observes supervisord, the
memory guard and the probes, feeds them in and carries out the effects they return.
See docs/lifecycle.md. Its parts by role: deploys.py (release steps), exitwatch.py
(monitor cadence), status.py (status, state.json), replica_memory.py, logfollow.py.

Blocking work (XML-RPC to supervisord, psutil) runs in threads; everything that changes
the formation runs on the loop, serialised by one lock, so concurrent `scale` calls
cannot interleave.
"""
import asyncio
import os
import signal
import time
from dataclasses import replace
from xmlrpc.client import Fault

from . import lifecycle, release, rundir, status
from .balancer import Pool
from .checks import load_checks
from .deploys import Releases, file_content
from .errors import RuntimeFailure, UsageError
from .exitwatch import ExitWatcher
from .failure import LOG_BYTES, cause, explain, load_failure, this_run
from .formation import replica_port, resolve_formation, format_formation
from .health import Health, HealthDriver
from .launch import give_up, write_replica_program
from .lifecycle import (Answered, Event, Fatal, OomKilled, OutOfRotation, Pin, ProcessInfo,
                        Removing, Report, RestartRequested, ScheduleRestart, StartProbe,
                        StartProcess, State, StopProcess, Unhealthy, WatchMemory)
from .logfollow import LogFollower
from .output import Printer, last_lines
from .replica_memory import ReplicaMemory
from .sizes import format_size
from .status import order_key

FAILED_START_GRACE = 5.0  # s the other replicas get once one cannot load the app
TRANSITIONS = ("STARTING", "STOPPING", "BACKOFF")  # supervisord states the monitor polls fast
_EXITED = ("EXITED", "BACKOFF", "FATAL")


class Replica:
    """One replica: its lifecycle record (``rec``: state, pid, ready, restarts, … —
    decided by lifecycle.py, read through as attributes) and what only the runner keeps
    for `status` and the waiters."""

    def __init__(self, spec, command, memory_limit):
        self.rec = lifecycle.ReplicaRecord(spec.name, spec.type, spec.port,
                                           memory_limit=memory_limit)
        self.index, self.command = spec.index, command
        self.memory_bytes = self.peak_bytes = 0
        self.peak_pid = None       # the process peak_bytes belongs to
        self.cpus = None           # CPU set when --spread pins it
        self.failure = None        # {"code", "signal", "cause", "line", "cannot_load"}
        self.awaited = False       # a waiter (start, roll) reports its failure
        self.exit_seen = None      # (start, stop) of the exit whose log was read
        self.load_code = None      # failure.load_failure of that exit (0: none)

    def __getattr__(self, name):  # name, type, port, state, pid, ready, … of the record
        if name == "rec":
            raise AttributeError(name)
        return getattr(self.rec, name)

    def as_json(self):
        return dict(self.rec.as_json(), memory_bytes=self.memory_bytes,
                    peak_memory_bytes=self.peak_bytes, command=self.command, cpus=self.cpus)


class Runner:
    def __init__(self, project, settings, counts, printer=None):
        """project: a loaded Project (procfile, env, paths); counts: the formation."""
        self.project = project
        self.settings = settings
        self.counts = counts
        self.out = printer or Printer()
        self.run_dir = project.run_dir
        self.host = settings.host
        self.port = settings.port
        self.base_port = settings.base_port
        self.replicas = {}
        self.pool = Pool(settings.balance)
        # Health owns the rotation: readiness, the proxy's passive signal, active checks
        # (backing off while no request comes, as the proxy's own checker would).
        self.health = Health(self.pool, interval=settings.proxy_health_interval,
                             idle_interval=settings.proxy_health_idle_interval,
                             on_change=self._health_changed,
                             on_checks_failed=self._checks_failed)
        self.health.checks = project.checks  # CHECKS gate every new web process
        self.health.prefix = f"/{settings.app_name}/" if settings.app_name else ""
        self.health_driver = None
        self.lc = lifecycle.Settings.from_mapping(settings)
        self.lock = None
        self.stopping = None
        self.events = status.Events()  # recent events for status/dashboard
        self.state_file = status.StateFile(self.run_dir, self.out)
        self.limits = project.memory_limits
        self.proxy = None
        self.control = None
        self.sup = None
        self.logs = LogFollower(self.out, lambda name: self.sup.log_path(name))
        self.started_at = time.time()
        self.created = time.monotonic()
        self.positions = {t: i for i, t in enumerate(project.type_names)}
        self.app_name = settings.app_name
        self.spread = self.lc.spread
        self.watcher = None
        self.memory = ReplicaMemory(settings, self.replicas, self.out, self._event,
                                    self.observe, self.health.served_since_spawn)
        self.startup_error = None  # raised once stopped (e.g. every replica OOMKilled idle)
        self._reported_error = None  # the bad edit reported last (reported once)
        self.services = None       # managed Redis/Postgres (services.py), may be empty
        self.autostart = False     # supervisord started the first replicas by itself
        self.memory_history = None  # dashboard.MemoryHistory, sampled every second
        self.sup_died = False
        self.releases = Releases(project, settings, self.out, self._event, self._save_state)
        self.cadence = ExitWatcher(settings.monitor_idle_interval)  # when the monitor polls

    # -- lifecycle -----------------------------------------------------------
    def run(self, launched):
        """Take over what launch.launch() spawned, then run the loop until stopped."""
        self.sup, self.listener, self.services = launched.sup, launched.listener, launched.services
        self.autostart = launched.autostart
        self.releases.sup = self.sup
        for spec in launched.specs:
            r = self._add_replica_object(spec, launched.tails[spec.name])
            r.awaited = True  # _await_startup reports its failure, one line per type
            if launched.autostart:
                r.rec = replace(r.rec, spawned_at=launched.spawned_at)
        for svc in self.services or ():
            self.logs.follow_new(svc.name)
        self.created = launched.started  # "ready in" counts from the start command
        try:
            self._save_state(strict=True)  # without state.json a kill -9 would orphan replicas
        except OSError as exc:
            give_up(self.sup, exc, self.run_dir)
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            pass
        try:
            return asyncio.run(self.main())
        except KeyboardInterrupt:
            self.sup.shutdown(self.settings.stop_timeout + 5, first=list(self.replicas))
            self._kill_all_now()
            return 1

    async def main(self):
        from . import dashboard
        from .api import ControlAPI
        from .control import ControlServer
        from .proxy import Proxy

        self.lock = asyncio.Lock()
        self.stopping = self.releases.stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        self.loop = loop
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._signal_stop)
        tasks = []
        try:
            await asyncio.to_thread(self.sup.wait_up)
            if self.services:  # replicas start only once every service answers
                await asyncio.to_thread(self.services.start, self.sup, self.out,
                                        self.settings.ready_timeout)
            if not await self.releases.at_start():
                return 0  # stopped while the release ran
            self.out.system(f"starting {format_formation(self.counts)} from {self.project.procfile_path}")
            if not self.autostart:
                now = time.monotonic()
                for r in self.replicas.values():
                    r.rec = replace(r.rec, spawned_at=now)
                await asyncio.to_thread(self.sup.start_many, list(self.replicas))
            self._save_state()
            self.memory.start(self.sup)
            self.health_driver = HealthDriver(self.health)
            self.health_driver.start()
            self.api = ControlAPI(self)  # the one control surface, behind both doors
            # The active health check is Health's: the proxy's own checker stays off.
            self.proxy = Proxy(self.pool, self.listener,
                               replace(self.settings, proxy_health_interval=0),
                               local_handler=self._local_request)
            self.proxy.root_is_local = bool(self.app_name)
            await self.proxy.start()
            self.control = ControlServer(rundir.control_socket(self.run_dir), self.api)
            await self.control.start()
            tail = self.logs.run(self._names, lambda: self.cadence.activity)
            tasks += [asyncio.ensure_future(self._monitor()), asyncio.ensure_future(tail),
                      dashboard.start_history(self)]  # dashboard: memory-over-time samples
            startup = asyncio.ensure_future(self._await_startup())
            tasks.append(asyncio.ensure_future(self._watch_files(startup)))
            ok = await startup
            if ok:
                async with self.lock:  # postdeploy, once the replicas serve
                    await self.releases.after_deploy(self.project.release_steps)
                await self.stopping.wait()
                if self.startup_error is not None:
                    raise self.startup_error
            return 0 if ok and not self.sup_died else 1
        finally:
            for t in tasks:
                t.cancel()
            await self._shutdown()

    async def _local_request(self, req, body):
        """Requests the runner answers itself: /_dashscale/… and, with --app-name, `/`."""
        from . import dashboard
        if req.target == b"/" and self.app_name:
            return 302, [(b"location", f"/{self.app_name}/".encode())], b""
        return await dashboard.handle(self.api, req, body)

    def _signal_stop(self):
        if self.stopping.is_set():
            self.out.system("second interrupt: killing replicas now")
            self._kill_all_now()
            os._exit(1)
        self.out.system("stopping (Ctrl-C again to kill at once)")
        self.stopping.set()

    async def _shutdown(self):
        if self.watcher:
            self.watcher.stop()
        if self.control:
            await self.control.close()
        if self.proxy:
            await self.proxy.close()
        self.memory.stop()
        if self.health_driver:
            self.health_driver.stop()
        if self.sup and self.sup.process:
            self.out.system("stopping replicas")
            # Services have the lowest priority: supervisord stops them after the replicas.
            extra = 40 if self.services else 0
            await asyncio.to_thread(self.sup.shutdown,
                                    self.settings.stop_timeout + 5 + extra,
                                    list(self.replicas))
        self._kill_all_now()
        self.project.pods.cleanup()
        if self.services:
            self.services.stop_leftovers()
            for s in self.services:
                self.logs.once(s.name)
        for name in list(self.replicas):
            self.logs.once(name)
        for name in ("supervisor.sock", "control.sock", "state.json", "supervisord.pid",
                     rundir.TOKEN_FILE):
            try:
                os.unlink(os.path.join(self.run_dir, name))
            except FileNotFoundError:
                pass
        self.out.system("stopped")

    def _kill_all_now(self):
        """Anything of ours still alive (a replica that ignored TERM): SIGKILL its group."""
        for r in self.replicas.values():
            if r.pid:
                try:
                    os.killpg(r.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    # -- replicas ------------------------------------------------------------
    def _names(self):
        """Every supervised process: the replicas, then the services."""
        return list(self.replicas) + [s.name for s in self.services or ()]

    def _new_replica(self, spec):
        """A replica added while running (scale, roll): its program, then its object."""
        write_replica_program(self.sup, self.project, spec, self.app_name)
        return self._add_replica_object(spec)

    def _add_replica_object(self, spec, tail=None):
        ptype = self.project.procfile.types[spec.type]
        r = Replica(spec, ptype.command, self.limits[spec.type])
        self.replicas[r.name] = r
        self.logs.follow(r.name, tail)
        return r

    def _add_and_start(self, names):
        self.sup.add(names)
        for name in names:
            r = self.replicas[name]
            r.rec = replace(r.rec, spawned_at=time.monotonic())
            self.sup.start_replica(name)

    async def _await_startup(self):
        """Wait until every replica answers or has failed; report, then print the URL."""
        deadline = time.monotonic() + self._ready_timeout()
        t0 = self.created
        while not self.stopping.is_set():
            pending = [r for r in self.replicas.values() if not r.ready and not r.failure
                       and r.state is not State.OOMKILLED]
            if not pending:
                break
            if any(r.failure and r.failure["cannot_load"] for r in self.replicas.values()):
                # The app cannot load: the others get a few seconds to say so too.
                deadline = min(deadline, time.monotonic() + FAILED_START_GRACE)
            if time.monotonic() > deadline:
                names = ", ".join(r.name for r in pending)
                self.out.system(f"still not answering after {time.monotonic() - t0:.0f}s: {names}")
                break
            await asyncio.sleep(0.02)
        for r in self.replicas.values():
            r.awaited = False
        if self.stopping.is_set():
            return True
        failed = [r for r in self.replicas.values() if r.failure]
        self._report_failed_types(failed)
        web = [r for r in self.replicas.values() if r.type == "web"]
        ready = [r for r in web if r.ready]
        cannot_load = sorted({r.type for r in failed if r.failure["cannot_load"]})
        if cannot_load and not (web and not ready):
            self.out.system(f"{', '.join(cannot_load)} cannot load the app; stopping")
            return False
        if web and not ready:
            self.out.system("no web replica could start; stopping")
            if all(r.state is State.OOMKILLED for r in web):
                raise UsageError(
                    f"every web replica was OOMKilled while starting: the limit "
                    f"{format_size(web[0].memory_limit)} is too small for this app",
                    self.project.limit_source)
            return False
        if web:
            self.out.system(f"{len(ready)}/{len(web)} web replicas ready in "
                            f"{time.monotonic() - t0:.2f}s — open {self.url}")
        else:
            self.out.system(f"no web replicas: {self.url} answers 503")
        self._event("start", f"started {format_formation(self.counts)}")
        return True

    def _report_failed_types(self, failed):
        """One line per process type that failed: the cause from its first replica."""
        for type_ in self.project.type_names:
            mine = sorted((r for r in failed if r.type == type_), key=lambda r: r.index)
            if mine:
                self.out.system(f"{type_}: {mine[0].failure['line']}")

    def _ready_timeout(self):
        """How long a new replica may take to be ready: ready_timeout, plus its CHECKS."""
        return self.settings.ready_timeout + self.health.checks_budget()

    @property
    def guard(self):
        """The memory guard (memory.py), once the loop runs."""
        return self.memory.guard

    @property
    def url(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}" + (f"/{self.app_name}/" if self.app_name else "")

    # -- the monitor: observe, decide (lifecycle), carry out ----------------------
    async def _monitor(self):
        """gunicorn's arbiter: one loop that polls supervisord, steps each replica's
        state machine, ticks its timers, then sleeps until the next poll or deadline
        (or until a supervised process exits)."""
        self.cadence.start()
        try:
            await self._monitor_loop()
        finally:
            self.cadence.close()

    async def _monitor_loop(self):
        while True:
            try:
                infos = await asyncio.to_thread(self.sup.all_info)
            except Exception as exc:  # supervisord gone: nothing can run without it
                if self.sup.process.poll() is not None and not self.stopping.is_set():
                    self.out.system(f"supervisord died (exit {self.sup.process.returncode}); "
                                    "killing replicas and stopping")
                    self._kill_all_now()
                    self.sup.process = None
                    self.sup_died = True  # exit 1: this is a failure, not a stop
                    self.stopping.set()
                    return
                self.out.system(f"supervisord did not answer: {exc}")
                await asyncio.sleep(0.5)
                continue
            exits = self.sup.exits()  # read after the poll: every exit it shows is logged
            seen = self._seen()
            for name, r in list(self.replicas.items()):
                if name in infos:
                    self.observe(name, self._process_info(r, infos[name], exits.get(name)))
            for name in list(self.replicas):
                self.observe(name)  # time-driven decisions only (back-off restarts)
            changed = seen != self._seen()
            if self.services and self.services.update(infos, self.out):
                changed = True
            if changed:
                self._save_state()
            self.memory.update()
            if changed or self.lock.locked() or \
                    any(i["statename"] in TRANSITIONS for i in infos.values()):
                self.cadence.busy()
            self.cadence.watch({i["pid"] for i in infos.values() if i["pid"]})
            await self.cadence.sleep(self._until_next_pass())

    def _seen(self):
        """What a poll can change: each replica's state and process."""
        return {name: (r.state, r.pid) for name, r in self.replicas.items()}

    def _until_next_pass(self):
        delay = self.cadence.poll_interval()
        due = lifecycle.next_deadline([r.rec for r in self.replicas.values()])
        return delay if due is None else max(0.0, min(delay, due - time.monotonic()))

    def _process_info(self, r, info, logged):
        """supervisord's info as an observation, with the exit read from its log and,
        once per exit, gunicorn's verdict from the replica's own log."""
        pid = info.get("pid") or None
        if info["statename"] in _EXITED or (pid and r.pid and pid != r.pid):
            key = (info.get("start"), info.get("stop"))
            if key != r.exit_seen:
                code = logged[0] if logged else (
                    info.get("exitstatus") if info["statename"] == "EXITED" else None)
                r.exit_seen, r.load_code = key, load_failure(self._run_log(r), code, r.command) or 0
        else:
            r.load_code = None
        return ProcessInfo.from_rpc(info, time.time(), logged, r.load_code)

    def _run_log(self, r):
        """The lines of the replica's last gunicorn run (of its current pid)."""
        return this_run(last_lines(self.sup.log_path(r.name), 5000, LOG_BYTES), r.pid)

    def observe(self, name, obs=None):
        """Step the replica's state machine with ``obs`` (None: only tick) and carry out
        the effects; returns the task of its supervisord calls, if any."""
        r = self.replicas.get(name)
        if r is None:
            return None
        now, effects = time.monotonic(), []
        if obs is not None:
            r.rec, effects = lifecycle.step(r.rec, obs, now, self.lc)
            verdict = isinstance(obs, OomKilled) and lifecycle.stop_verdict(
                [x.rec for x in self.replicas.values()])
            if verdict:  # nothing can ever serve: say so and stop, not run an empty proxy
                self._carry_out(r, effects)
                self.out.system("no web replica could start; stopping")
                self.startup_error = UsageError(verdict.cause, self.project.limit_source)
                self.stopping.set()
                return None
        r.rec, more = lifecycle.tick(r.rec, now, self.lc)
        return self._carry_out(r, effects + more)

    def _health_changed(self, name, pid, in_rotation):
        self.observe(name, (Answered if in_rotation else Unhealthy)(pid))

    def _checks_failed(self, name, pid, line):
        """Its CHECKS failed: it stays out of rotation; a waiter (start, a roll) reports
        it, else it is said here."""
        r = self.replicas.get(name)
        if r is None or r.pid != pid:
            return
        r.failure = {"code": None, "signal": None, "cause": line, "cannot_load": False,
                     "line": f"failed its checks: {line}"}
        self._event("checks", f"{name} failed its checks: {line}")
        if not r.awaited:
            self.out.system(f"{name} failed its checks: {line}; kept out of rotation")

    def _carry_out(self, r, effects):
        calls = []
        for e in effects:
            if isinstance(e, (StopProcess, StartProcess)):
                calls.append(e)
                if isinstance(e, StartProcess):
                    r.failure = None  # a failed replica gets a new chance
            else:
                self._EFFECTS[type(e)](self, r, e)
        if not calls:
            return None
        task = asyncio.ensure_future(asyncio.to_thread(self._supervise, calls))
        task.add_done_callback(lambda _: self.cadence.poke())
        return task

    def _supervise(self, calls):
        """StopProcess / StartProcess, in order, on a thread."""
        try:
            for call in calls:
                if isinstance(call, StopProcess):
                    self.sup.stop_replica(call.name)
                else:
                    self.sup.start_replica(call.name)
        except (OSError, Fault):
            pass  # removed meanwhile, or supervisord is going away: the monitor sees it

    def _fatal(self, r, e):
        """It cannot start: the line that says why, from its log (a waiter — start, a
        roll — reports it, else it is printed here)."""
        run = self._run_log(r)
        sig = (r.last_exit or {}).get("signal")
        line = explain(run, e.code, sig, r.command, _shown(self.sup.log_path(r.name)))
        why = cause(run)
        r.failure = {"code": e.code, "signal": sig, "cause": why, "line": line,
                     "cannot_load": bool(load_failure(run, e.code, r.command))}
        r.rec = replace(r.rec, last_exit=dict(r.last_exit or {}, cause=why))
        if not r.awaited:
            self.out.system(f"{r.name}: {line}")

    _EFFECTS = {
        Report: lambda self, r, e: self.out.system(e.line),
        Event: lambda self, r, e: self._event(e.kind, e.message),
        StartProbe: lambda self, r, e: self.health.spawned(e.name, e.pid, e.port),
        OutOfRotation: lambda self, r, e: self.health.down(e.name),
        WatchMemory: lambda self, r, e: self.memory.watch(e),
        Pin: lambda self, r, e: self.memory.spread(r),
        ScheduleRestart: lambda self, r, e: None,  # the monitor sleeps until next_deadline
        Fatal: _fatal,
    }

    # -- live changes (control API) -------------------------------------------
    async def restart(self, target=None, rolling=False):
        async with self.lock:
            names = self._select(target)
            deploy = target not in self.replicas  # not one pod's restart: a deploy of the tree
            if deploy:
                failed = await self.releases.deploy({self.replicas[n].type for n in names},
                                                    () if rolling else names,
                                                    self.project.release_steps)
                if failed:
                    raise RuntimeFailure(f"release step failed: {failed.describe()}; "
                                         "nothing restarted, the replicas keep serving")
            if rolling:  # grouped first: a roll replaces names, and may reuse them
                by_type = {}
                for name in names:
                    by_type.setdefault(self.replicas[name].type, []).append(name)
                for type_, group in by_type.items():
                    await self._roll(type_, group)
            else:
                for name in names:
                    calls = self.observe(name, RestartRequested())
                    if calls:
                        await calls
            if deploy:
                await self.releases.after_deploy(self.project.release_steps)
            self._event("restart", f"restarted {', '.join(names)}" + (" (rolling)" if rolling else ""))
            return names

    def _select(self, target):
        if not target or target == "all":
            return sorted(self.replicas, key=order_key)
        if target in self.replicas:
            return [target]
        names = [n for n, r in self.replicas.items() if r.type == target]
        if not names:
            raise UsageError(f"no replica or process type named '{target}' "
                             f"(running: {', '.join(sorted(self.replicas, key=order_key))})")
        return sorted(names, key=order_key)

    async def _roll(self, type_, names):
        """Replace replicas one at a time: start a new one, wait until it serves, then
        drain and stop an old one — serving capacity never drops."""
        timeout = self._ready_timeout()
        for old_name in names:
            [new] = await self._add_replicas(type_, 1)
            new.awaited = True  # its failure is reported here, with the roll
            if not await self._wait_ready(new, timeout):
                why = new.failure["line"] if new.failure else \
                    f"did not become ready within {timeout:g}s"
                await self._remove_replica(new)
                self.out.system(f"rolling {type_}: {new.name} {why}; stopped the roll, "
                                f"{old_name} and the others keep serving")
                self._event("reload-error", f"roll of {type_} stopped: {new.name} {why}")
                raise RuntimeFailure(f"{new.name} {why}; roll of {type_} stopped")
            new.awaited = False
            await self._remove_replica(self.replicas[old_name])

    async def _wait_ready(self, r, timeout):
        """Until a (new) replica is ready; False if it failed or the time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if r.ready:
                return True
            if r.failure:
                return False
            await asyncio.sleep(0.02)
        return False

    async def scale(self, spec):
        async with self.lock:
            counts = resolve_formation(self.project.type_names, self.counts, spec,
                                       **self.settings.caps)
            added = await self._apply_counts(counts)
            self.counts = counts
            self.project.save_formation(counts)
            self._event("scale", f"scaled to {format_formation(counts)}")
            self.out.system(f"formation is now {format_formation(counts)}")
            self._save_state()
            timeout = self._ready_timeout()
            await asyncio.gather(*(self._wait_ready(r, timeout) for r in added))
            return counts

    async def _apply_counts(self, counts):
        """Add or remove replicas per type; returns the replicas added."""
        added, removing = [], []
        for type_ in self.project.type_names:
            have = sorted((r for r in self.replicas.values() if r.type == type_),
                          key=lambda r: r.index)
            want = counts.get(type_, 0)
            if want > len(have):
                added += await self._add_replicas(type_, want - len(have))
            elif want < len(have):
                removing += have[want:]
        await asyncio.gather(*(self._remove_replica(r) for r in removing))
        return added

    def _position(self, type_):
        """A type keeps its port block for the whole run, even if the Procfile reorders."""
        if type_ not in self.positions:
            self.positions[type_] = max(self.positions.values(), default=-1) + 1
        return self.positions[type_]

    async def _add_replicas(self, type_, n):
        from .formation import ReplicaSpec
        used = {r.index for r in self.replicas.values() if r.type == type_}
        position = self._position(type_)
        specs = []
        index = 1
        while len(specs) < n:
            if index not in used:
                port = replica_port(position, index, self.base_port)
                specs.append(ReplicaSpec(f"{type_}.{index}", type_, index, port))
            index += 1
        # Check every port before registering any replica: a failed scale leaves nothing behind.
        for spec in specs:
            if rundir.port_in_use(spec.port):
                raise RuntimeFailure(f"port {spec.port} for {spec.name} is in use")
        new = [self._new_replica(spec) for spec in specs]
        await asyncio.to_thread(self._add_and_start, [r.name for r in new])
        self.cadence.poke()
        return new

    async def _remove_replica(self, r):
        """Drain (no new requests; in-flight ones finish within the grace), then stop."""
        grace = self.settings.stop_timeout
        self.observe(r.name, Removing())
        self.health.removing(r.name)
        drained = await self.pool.drain(r.name, grace)
        if not drained:
            self.out.system(f"{r.name}: requests still in flight after {grace:g}s; stopping anyway")
        self.memory.unwatch(r.name)
        await asyncio.to_thread(self.sup.remove, r.name)
        self.project.pods.discard(r.name)
        self.health.gone(r.name)
        self.replicas.pop(r.name, None)
        self.logs.forget(r.name)

    # -- reload on file changes --------------------------------------------------
    async def _watch_files(self, startup, at_most=2.0):
        """Watch for edits once the replicas are up, or after ``at_most`` seconds if
        they take longer (watchdog's import and threads are CPU that booting replicas
        can use); an edit saved before that is applied at once."""
        await asyncio.wait([startup], timeout=at_most)
        from .reloader import FileWatcher
        self.watcher = FileWatcher(self.loop, self.project.watched_files, self._files_changed)
        self.watcher.start()
        missed = {path for path, stamp in self.project.stamps().items()
                  if stamp != self.project.loaded_stamps[path]}
        if missed:
            self._files_changed(missed)

    def _files_changed(self, paths):
        if self.stopping.is_set():
            return
        self._reload_task = asyncio.ensure_future(self.reload(paths))

    async def reload(self, paths=()):
        """Apply an edit of the Procfile / env files / scale file. Anything invalid is
        reported with file and line and changes nothing."""
        if _empty(self.project.procfile_path):
            # Writers that truncate then write show an empty file for a moment: give
            # the write a little longer before reporting an empty Procfile.
            await asyncio.sleep(0.25)
        async with self.lock:
            t0 = time.monotonic()
            try:
                procfile, env, limits = self.project.reread()
                steps = release.steps(procfile, self.project.directory)
                types = release.process_types(procfile)
                caps = self.settings.caps
                counts = {t: self.counts.get(t, 1) for t in types}
                # A deleted scale file says nothing: keep the formation as it is.
                scale_changed = self.project.scale_file in paths and \
                    os.path.exists(self.project.scale_file)
                if scale_changed or any(t not in self.counts for t in types):
                    # The scale file (or the saved formation) says how many of a new type.
                    saved = resolve_formation(types, self.project.saved_formation(types), **caps)
                    counts.update({t: n for t, n in saved.items()
                                   if scale_changed or t not in self.counts})
                counts = resolve_formation(types, counts, **caps)
                checks = load_checks(self.project.directory)
            except UsageError as exc:
                if exc.file is None:  # a cap or formation error: say which file caused it
                    exc.file = self.project.scale_file if self.project.scale_file in paths \
                        else self.project.procfile_path
                self._reload_error(exc)
                return False
            self._reported_error = None
            self._set_checks(checks)
            old = self.project.procfile.types
            env_changed = env != self.project.env
            removed = [t for t in self.project.type_names if t not in types]
            changed = [t for t in types if t in old and (
                old[t].command != procfile.types[t].command or env_changed
                or limits[t] != self.limits.get(t))]
            if not removed and not changed and counts == self.counts:
                self.releases.forget_failure()
                if steps != self.project.release_steps:
                    self.project.release_steps = steps
                    self.out.system("reload: release steps changed; they run before the "
                                    "next roll")
                return True  # saved with the same content
            new_types = [t for t in types if t not in old]
            deploy = bool(changed or new_types)  # what is rolled or added: the tree as it is now
            if deploy and not await self.releases.deploy_for_reload(
                    changed + new_types, steps, env, format_formation(self.counts)):
                return False
            self.project.procfile, self.project.type_names, self.project.env = procfile, types, env
            self.project.release_steps = steps
            self.limits = limits
            for t in types:
                self._position(t)
            what = []
            for t in removed:
                what.append(f"removed {t}")
                await asyncio.gather(*(self._remove_replica(r) for r in list(self.replicas.values())
                                       if r.type == t))
            added = await self._apply_counts(counts)
            if added:
                what.append("started " + ", ".join(r.name for r in added))
            self.counts = counts
            for t in changed:
                names = sorted((n for n, r in self.replicas.items() if r.type == t and r not in added),
                               key=order_key)
                if names:
                    what.append(f"rolling {t}")
                    self.out.system(f"reload: {t} changed; rolling {len(names)} replica(s)")
                    try:
                        await self._roll(t, names)
                    except RuntimeFailure:  # _roll said why
                        what[-1] = f"roll of {t} FAILED; old replicas kept"
                        deploy = False  # no postdeploy for a deploy that did not happen
            if deploy:
                await self.releases.after_deploy(steps)
            self._save_state()
            summary = "; ".join(what) or "formation " + format_formation(counts)
            self.out.system(f"reload applied in {time.monotonic() - t0:.2f}s: {summary}")
            self._event("reload", summary)
            return True

    def _set_checks(self, checks):
        """An edit of CHECKS applies to the next new process (start, scale-up, roll)."""
        if checks != self.project.checks:
            self.project.checks = self.health.checks = checks
            what = "removed" if checks is None else f"{len(checks.checks)} check(s)"
            self.out.system(f"reload: CHECKS {what}; applies to new replicas from now on")
            self._event("reload", f"CHECKS: {what}")

    def _reload_error(self, exc):
        """Say what is wrong with an edit once per content of the files: an editor's
        saves of the same bad text are not news."""
        key = (str(exc), [file_content(path) for path in self.project.watched_files])
        if key == self._reported_error:
            return
        self._reported_error = key
        self.out.system(f"reload: {exc} — nothing changed, still running "
                        f"{format_formation(self.counts)}")
        self._event("reload-error", str(exc))

    async def stop(self):
        self.stopping.set()

    # -- status (status.py) ------------------------------------------------------
    def status(self):
        self.memory.update()
        return status.status(self)

    def _event(self, kind, message):
        self.events.add(kind, message)

    def _save_state(self, strict=False):
        self.state_file.write(status.state(self), strict)


def _shown(path):
    """A path as short as it stays clear: relative to the current directory when inside."""
    rel = os.path.relpath(path)
    return path if rel.startswith(os.pardir) else rel


def _empty(path):
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False

