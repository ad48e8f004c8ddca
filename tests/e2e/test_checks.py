"""CHECKS gate start, scale-up and rolls (Dokku's zero-downtime checks, as DE uses them):
real supervisord and gunicorn replicas of tests/apps/echo_app.py, whose /env?keys=…
shows the replica's environment, so a .env edit (a roll) decides whether a check passes.
The unit tests of the format and of run_checks are in test_checks_unit.py."""
import re
import threading
import urllib.error

import pytest

from dashscale_local.testing import wait_for

pytestmark = pytest.mark.slow

ECHO = "web: gunicorn echo_app:app --workers 1\n"
# WAIT=0 and few attempts keep the tests fast; Dokku's defaults are 5 s / 30 s / 5.
CHECKS = 'WAIT=0\nTIMEOUT=5\nATTEMPTS=2\n# the app must see APP_HEALTH=ok\n' \
         '/env?keys=APP_HEALTH "APP_HEALTH": "ok"\n'


def system_lines(output):
    return [line.split("| ", 1)[1] for line in output.splitlines()
            if re.match(r"^\S+ dashscale +\|", line)]


def pids(run):
    return {r["name"]: r["pid"] for r in run.status()["replicas"]}


class Traffic:
    """Requests through the proxy in a loop; every answer that is not a 200 is kept."""

    def __init__(self, run):
        self.run, self.failures, self.count = run, [], 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while not self.done.is_set():
            try:
                status = self.run.get("/", timeout=10)[0]
            except (urllib.error.URLError, OSError) as exc:
                status = exc
            self.count += 1
            if status != 200:
                self.failures.append(status)

    def stop(self):
        self.done.set()
        self.thread.join(15)


def test_a_failing_check_keeps_the_old_replicas_serving_and_a_passing_one_rolls(
        dashscale, app_dir):
    (app_dir / "CHECKS").write_text(CHECKS)
    (app_dir / ".env").write_text("APP_HEALTH=ok\n")
    run = dashscale(ECHO, formation="web=2")
    assert [r["checks"] for r in run.status()["replicas"]] == ["passed", "passed"]
    before = pids(run)
    traffic = Traffic(run)
    try:
        (app_dir / ".env").write_text("APP_HEALTH=broken\n")  # the new version fails
        [stopped] = wait_for(lambda: [line for line in system_lines(run.output())
                                      if line.startswith("rolling web: web.3")], 30,
                             message="the roll stopped")
        assert stopped == (
            "rolling web: web.3 failed its checks: CHECKS:5: GET /env?keys=APP_HEALTH: "
            "'\"APP_HEALTH\": \"ok\"' not in the response (got '{\"APP_HEALTH\": "
            "\"broken\"}') (attempt 2/2); stopped the roll, web.1 and the others keep serving")
        assert pids(run) == before  # the old replicas kept serving, nothing else runs
        served_during_failed_roll = traffic.count
        (app_dir / ".env").write_text("APP_HEALTH=ok\n")  # fixed: the roll completes
        wait_for(lambda: not set(pids(run).values()) & set(before.values())
                 and all(r["ready"] for r in run.status()["replicas"]), 60,
                 message="the old replicas replaced")
    finally:
        traffic.stop()
    assert traffic.failures == []
    assert served_during_failed_roll > 0 and traffic.count > served_during_failed_roll
    replicas = run.status()["replicas"]
    assert len(replicas) == 2 and [r["checks"] for r in replicas] == ["passed", "passed"]


def test_start_with_a_failing_check_exits_non_zero_naming_it(dashscale, app_dir):
    (app_dir / "CHECKS").write_text("WAIT=0\nTIMEOUT=2\nATTEMPTS=1\n/ welcome-page\n")
    run = dashscale(ECHO, formation="web=2", wait=False)
    code = run.process.wait(60)
    out = run.output()
    assert code == 1, out
    lines = system_lines(out)
    [web] = [line for line in lines if line.startswith("web: ")]
    assert web.startswith("web: failed its checks: CHECKS:4: GET /: 'welcome-page' not in "
                          "the response (got 'web."), web
    assert "no web replica could start; stopping" in lines


def test_an_invalid_checks_file_stops_start_and_a_live_edit_changes_nothing(
        dashscale, app_dir):
    (app_dir / "CHECKS").write_text("WAIT=0\nATTEMPTS=zero\n/health\n")
    run = dashscale(ECHO, wait=False)
    assert run.process.wait(30) == 2
    assert "CHECKS:2: ATTEMPTS='zero': want a whole number ≥ 1" in run.output()
    assert not (app_dir / ".dashscale" / "supervisor.sock").exists()

    (app_dir / "CHECKS").write_text("WAIT=0\nTIMEOUT=5\nATTEMPTS=1\n/ web.\n")
    run = dashscale(ECHO, formation="web=1")
    before = run.status()["replicas"]
    assert before[0]["checks"] == "passed"
    (app_dir / "CHECKS").write_text("WAIT=0\n/ web.\nnot-a-path here\n")
    bad = "CHECKS:3: a check must start with a path like /health, got 'not-a-path'"
    wait_for(lambda: bad in run.output(), 15, message="the bad CHECKS reported")
    assert run.output().count(bad) == 1
    # nothing that runs changed, and the old checks still gate a scale-up
    assert run.status()["replicas"] == before or \
        [(r["name"], r["pid"], r["checks"]) for r in run.status()["replicas"]] == \
        [(r["name"], r["pid"], r["checks"]) for r in before]
    run.cli("scale", "web=2", check=True)
    wait_for(lambda: [r["checks"] for r in run.status()["replicas"]] == ["passed", "passed"],
             30, message="web.2 checked")
