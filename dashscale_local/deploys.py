"""Deploys and their release steps, for the runner: a new snapshot of the app tree
(podfs), the steps of release.py run on it (once at start before the replicas start,
before each deploy: a reload of command/.env, a `restart` of a type; not on scale, as
Heroku and DE), postdeploy once the new replicas serve. Holds what a step leaves for
`status` and state.json. The runner decides when; see docs/lifecycle.md.
"""
import asyncio
import os
import signal
import time

from . import release, rundir
from .errors import RuntimeFailure
from .launch import process_env


class Releases:
    """The release steps of one run. ``event(kind, message)`` records an event,
    ``save_state()`` rewrites state.json (a running step is in it: a kill -9 orphans
    none); ``sup`` and ``stopping`` are set once the loop runs."""

    def __init__(self, project, settings, out, event, save_state):
        self.project, self.settings, self.out = project, settings, out
        self.event, self.save_state = event, save_state
        self.sup = self.stopping = None
        self.last = None      # release.Outcome of the last step run
        self.running = None   # the step running now
        self.proc = None      # its process
        self._failed = None   # the files' content whose release failed (said once)

    def status(self):
        """One-shot steps of a deploy, not replicas: the last one run and its result."""
        return {"steps": [step.as_json() for step in self.project.release_steps],
                "last": self.last.as_json() if self.last else None,
                "running": self.running}

    def identities(self):
        """The running step for state.json: its own process group, as a replica."""
        return {self.running: rundir.identity(self.proc.pid)} if self.proc else {}

    def forget_failure(self):
        """The files were saved back to content that needs no deploy."""
        self._failed = None

    async def at_start(self):
        """The release steps before the first replicas start. False when dashscale was
        stopped meanwhile; a failure is RuntimeFailure (exit 1): nothing starts."""
        failed = await self.run(self.project.release_steps, "before")
        if self.stopping.is_set():
            return False
        if failed:
            raise RuntimeFailure(f"release step failed: {failed.describe()}; "
                                 "no replica was started")
        return True

    async def deploy(self, types, names=(), steps=(), dotenv=None):
        """A new snapshot of the app tree (podfs); the release ``steps`` run on it; once
        they pass, it is for the replicas of ``types`` started from now on, and for
        ``names`` at their next spawn. The Outcome of a failed step (then the snapshot
        is for nobody), else None."""
        await asyncio.to_thread(self.project.pods.deploy)
        failed = await self.run(steps, "before", dotenv)
        if failed:
            return failed
        self.project.pods.assign(types)
        for name in names:
            self.project.pods.entry(self.sup.launch_dir, name)
        return None

    async def deploy_for_reload(self, types, steps, dotenv, formation):
        """A reload's deploy with its new release steps and .env. False when the
        snapshot or a step fails (said once per content of the files): nothing new
        starts, the running replicas (``formation``, for the message) serve on."""
        key = [file_content(path) for path in self.project.watched_files]
        if key == self._failed:
            return False  # an editor's second event for the same save
        try:
            failed = await self.deploy(types, steps=steps, dotenv=dotenv)
        except RuntimeFailure as exc:  # the snapshot
            self.out.system(f"reload: {exc} — nothing changed")
            self.event("reload-error", str(exc))
            return False
        self._failed = key if failed else None
        if failed and not self.stopping.is_set():
            self.out.system(f"reload: release step failed: {failed.describe()} — nothing "
                            f"changed, still running {formation}")
            self.event("reload-error", f"release step failed: {failed.describe()}")
        return not failed

    async def after_deploy(self, steps):
        """postdeploy, once the new replicas serve; a failure is reported and the new
        replicas stay (the deploy is done, as on Dash Enterprise)."""
        failed = await self.run(steps, "after")
        if failed and not self.stopping.is_set():
            self.out.system(f"postdeploy step failed: {failed.describe()}; the new replicas "
                            "keep serving")
            self.event("release-error", f"postdeploy step failed: {failed.describe()}")

    async def run(self, steps, phase, dotenv=None):
        """Run the ``phase`` steps in order, each to completion, with ``dotenv`` (default:
        the running .env); the Outcome of the first that fails (the rest do not run),
        else None."""
        for step in (release.before if phase == "before" else release.after)(steps):
            self.out.system(f"release step {step.name} ({step.source}): {step.command}")
            self.running = step.name
            try:
                outcome = await self._run_step(step, dotenv)
            finally:
                self.running = None
            self.last = outcome
            self.event("release", outcome.describe())
            if not outcome.ok:
                return outcome
            self.out.system(outcome.describe())
        return None

    async def _run_step(self, step, dotenv=None):
        """One step with a replica's environment (no PORT), on a disk of its own as a
        replica's (podfs: the latest deploy, `../mount` beside it); stopped with
        dashscale (TERM, then KILL after stop_timeout)."""
        runtime_dir = os.path.join(self.project.run_dir, "rt", step.name)
        os.makedirs(runtime_dir, mode=0o700, exist_ok=True)
        env = process_env(self.project, self.settings.app_name, step.name, runtime_dir,
                          dotenv=dotenv)
        pods, loop = self.project.pods, asyncio.get_running_loop()

        def started(proc):  # on the step's thread
            self.proc = proc
            loop.call_soon_threadsafe(self.save_state)

        def run():  # on a thread: its disk may be a copy of the deploy
            return release.run(step, env, pods.step_dir(step.name), self.out.line,
                               self.sup.log_path(step.name), started)
        job = asyncio.ensure_future(asyncio.to_thread(run))
        stopping = asyncio.ensure_future(self.stopping.wait())
        await asyncio.wait([job, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        proc = self.proc
        if not job.done() and proc:
            release.stop(proc)
            if not (await asyncio.wait([job], timeout=self.settings.stop_timeout))[0]:
                release.stop(proc, signal.SIGKILL)
        try:
            return await job
        except OSError as exc:  # could not even start it
            self.out.system(f"{step.name}: cannot run {step.command!r}: {exc}")
            return release.Outcome(step, 127, 0.0, time.time())
        finally:
            self.proc = None
            self.save_state()
            await asyncio.to_thread(pods.discard, step.name)  # its disk goes with it


def file_content(path):
    """The bytes of ``path`` (None if unreadable): what an edit of it changed."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None
