"""failure.py: the one line that says why a replica could not start, from real gunicorn
output (20.1, 23.0 and the venv's own, recorded from apps of tests/fixtures/shapes)."""
import os

import pytest

from dashscale_local.commands import runs_gunicorn
from dashscale_local.failure import cause, explain, load_failure, this_run
from dashscale_local.lifecycle import supervisord_exit
from tests import TESTS

LOGS = os.path.join(TESTS, "fixtures", "gunicorn_logs")
GUNICORN = "gunicorn app:server --workers 2"


def log(name):
    with open(os.path.join(LOGS, name)) as f:
        return f.read().splitlines()


@pytest.mark.parametrize("name, code, line", [
    ("20.1.0-importerr.log", 3, "worker failed to boot (exit 3): ModuleNotFoundError: "
                                "No module named 'no_such_dependency_xyz'"),
    ("main-importerr.log", 3, "worker failed to boot (exit 3): ModuleNotFoundError: "
                              "No module named 'no_such_dependency_xyz'"),
    ("23.0.0-noserver.log", 4, "app failed to load (exit 4): Failed to find attribute "
                               "'server' in 'noserver'."),
    ("20.1.0-ok.log", 4, "app failed to load (exit 4): Failed to parse 'server(' as an "
                         "attribute name or function call."),
    # --preload: the master loads the app, raises AppImportError and exits 1.
    ("main-preload-noserver.log", 1, "app failed to load (exit 1): Failed to find attribute "
                                     "'server' in 'noserver'."),
])
def test_cause_across_gunicorn_versions(name, code, line):
    lines = this_run(log(name))
    assert explain(lines, code, None, GUNICORN, "web.1.log") == f"{line} — see web.1.log"


def test_master_dying_of_a_second_halt_is_still_an_app_load_failure():
    # gunicorn ≥24: both workers fail at once, the master's stop() raises HaltServer
    # again and it exits 1 with a traceback of its own. The app's cause still wins.
    lines = log("23.0.0-noserver.log")[:-2] + [
        "Traceback (most recent call last):",
        '  File "/venv/gunicorn/arbiter.py", line 686, in reap_workers',
        "gunicorn.errors.HaltServer: <HaltServer 'App failed to load.' 4>"]
    assert load_failure(lines, 1, GUNICORN) == 4
    assert explain(lines, 1, None, GUNICORN) == \
        "app failed to load (exit 1): Failed to find attribute 'server' in 'noserver'."


def test_the_run_of_a_given_master_pid():
    first, second = log("23.0.0-noserver.log"), log("20.1.0-ok.log")
    lines = first + second
    assert cause(this_run(lines, pid=14282)) == \
        "Failed to find attribute 'server' in 'noserver'."
    assert cause(this_run(lines)) == cause(this_run(lines, pid=999)) == \
        "Failed to parse 'server(' as an attribute name or function call."


def test_syntax_error_names_file_and_line_and_chains_keep_the_last():
    lines = ["Traceback (most recent call last):", '  File "/app/app.py", line 3',
             "    x = (", "        ^", "SyntaxError: '(' was never closed"]
    assert cause(lines) == "SyntaxError: '(' was never closed (/app/app.py, line 3)"
    chained = ["Traceback (most recent call last):", '  File "a.py", line 1, in <module>',
               "KeyError: 'DB_URL'", "",
               "During handling of the above exception, another exception occurred:", "",
               "Traceback (most recent call last):", '  File "a.py", line 3, in <module>',
               "RuntimeError: set DB_URL in .env"]
    assert cause(chained) == "RuntimeError: set DB_URL in .env"


def test_without_traceback_the_last_meaningful_line():
    lines = ["[2026-01-01 10:00:00 +0000] [7] [INFO] Starting gunicorn 23.0.0",
             "[2026-01-01 10:00:00 +0000] [7] [ERROR] Connection in use: ('127.0.0.1', 5006)",
             "[2026-01-01 10:00:05 +0000] [7] [ERROR] Can't connect to ('127.0.0.1', 5006)"]
    assert cause(lines) == "Can't connect to ('127.0.0.1', 5006)"
    assert load_failure(lines, 1, GUNICORN) is None
    assert cause([]) is None


def test_exit_3_of_another_program_is_not_gunicorn_s():
    assert load_failure([], 3, "python worker.py") is None
    assert explain(["boom"], 3, None, "python worker.py") == "could not start (exit 3): boom"
    assert runs_gunicorn("cd src && ../.venv/bin/gunicorn app:server")
    assert runs_gunicorn("newrelic-admin run-program gunicorn app:server")
    assert not runs_gunicorn("python -m gunicorn_tools")


def test_supervisord_log_keeps_the_real_exit_status():
    lines = ["2026-12-07 01:43:09,102 WARN exited: web.3 (exit status 1; not expected)",
             "2026-12-07 01:43:09,393 WARN exited: web.4 (exit status 4; not expected)",
             "2026-12-07 01:43:10,393 WARN exited: web.10 (terminated by SIGKILL; not expected)"]
    assert [supervisord_exit(line) for line in lines] == [
        ("web.3", 1, None), ("web.4", 4, None), ("web.10", 137, "SIGKILL")]
    assert supervisord_exit("2026-12-07 01:43:09,102 INFO spawned: 'web.2' with pid 7") is None


def test_messages_of_two_workers_run_together_give_one_cause():
    line = "Failed to find attribute 'server' in 'app'."
    assert cause([line + line, "[2026-12-07 01:43:09 +0000] [7] [ERROR] Shutting down"]) == line
