"""What the runner shows: the `status` JSON (CLI, control socket, dashboard), the recent
events in it, and state.json (what `stop` and the next `start` find after a kill -9).
Built from the runner's parts; nothing here changes them.
"""
import os
import time

from . import rundir


class Events(list):
    """Recent events for status and the dashboard (the last 200 kept)."""

    def add(self, kind, message):
        self.append({"time": time.time(), "kind": kind, "message": message})
        del self[:-200]


def status(runner):
    """The `status` JSON of a running ``runner``."""
    replicas = [r.as_json() for r in sorted(runner.replicas.values(),
                                            key=lambda r: order_key(r.name))]
    stats = runner.pool.stats()
    for item in replicas:
        item["proxy"] = stats.get(item["name"], {"inflight": 0, "served": 0, "errors": 0})
        item["checks"] = runner.health.checks_of(item["name"])
    sup, services = runner.sup, runner.services
    return {
        "app_name": runner.app_name or None,
        "spread": runner.spread,
        "proxy": {"url": runner.url, "port": runner.port, "host": runner.host,
                  "balance": runner.pool.policy},
        "procfile": runner.project.procfile_path,
        "formation": dict(runner.counts),
        "watching": runner.watcher is not None,  # live reload of file edits is on
        "runner_pid": os.getpid(),
        "supervisord_pid": sup.process.pid if sup and sup.process else None,
        "replicas": replicas,
        # Each replica's own view of the app directory (overlay or copy), ../mount
        # shared; or "shared": every replica in the user's directory (--shared-fs).
        "filesystem": runner.project.pods.status(),
        # Apart from the replicas, as Dash Enterprise's managed Redis/Postgres: their
        # memory is not in memory.total_bytes / max_bytes.
        "services": services.status() if services else [],
        "release": runner.releases.status(),
        "memory": _memory(runner.replicas.values(), runner.guard, runner.settings),
        "events": runner.events[-50:],
        "proxy_stats": runner.proxy.stats() if runner.proxy else {},
    }


def _memory(replicas, guard, settings):
    return {"total_bytes": sum(r.memory_bytes for r in replicas),
            "max_bytes": sum(r.memory_limit for r in replicas),
            "metric": guard.metric if guard else settings.memory_metric,  # pss falls back to rss
            "on_limit": settings.on_limit}


def state(runner):
    """state.json of ``runner``: every process of ours (a release step's too) by its
    identity, so a kill -9 of the runner orphans none."""
    sup, services = runner.sup, runner.services
    replicas = {r.name: rundir.identity(r.pid) for r in runner.replicas.values() if r.pid}
    replicas.update(runner.releases.identities())
    return {
        "runner": rundir.identity(os.getpid()),
        "supervisord": rundir.identity(sup.process.pid) if sup and sup.process else None,
        "replicas": {k: v for k, v in replicas.items() if v},
        "procfile": runner.project.procfile_path,
        "proxy": {"host": runner.host, "port": runner.port},
        "formation": runner.counts,
        "services": services.identities() if services else {},
    }


class StateFile:
    """Writes state.json; a failure (disk full) is said once, and the run goes on."""

    def __init__(self, run_dir, out):
        self.run_dir, self.out = run_dir, out
        self.error = None

    def write(self, state, strict=False):
        """strict: raise OSError instead (at start: without it, nothing may run)."""
        try:
            rundir.write_state(self.run_dir, state)
        except OSError as exc:
            if strict:
                raise
            if not self.error:
                self.out.system(f"WARNING: cannot write {rundir.state_path(self.run_dir)}: "
                                f"{exc.strerror}; a kill -9 now would leave orphans")
            self.error = exc.strerror
            return
        self.error = None


def order_key(name):
    """Replicas in order: by type, then by number (web.2 before web.10)."""
    type_, _, index = name.rpartition(".")
    return (type_, int(index) if index.isdigit() else 0)
