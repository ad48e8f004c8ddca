"""The soak benchmark (benchmarks/soak.py) for one minute, as CI runs it: mixed load
through the proxy with OOM kills, scale changes and Procfile edits (rolling restarts).

Asserts the promise of issue 10: no failure other than requests in flight on an
OOM-killed replica (at most one per client per kill), no growth of the runner's open
file descriptors or memory, every chaos action done, and 0 orphans after `stop`.
The 10-minute run: `python benchmarks/soak.py` (README, "Guarantees").
"""
import json
import os
import subprocess
import sys

import pytest

from tests import REPO

pytestmark = pytest.mark.slow

MiB = 1 << 20


def test_soak_one_minute(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "soak.py"),
                           "--minutes", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    print(proc.stdout[-6000:])
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    table = proc.stdout[-4000:]
    assert r["unexpected_failures"] == 0, (r["failure_reasons"]["unexpected"], table)
    assert r["max_expected_per_oom"] <= r["clients"], table
    assert r["orphans"] == 0, r["orphan_info"]
    assert r["runner_exit"] == 0, table
    assert all(a["failed"] == 0 for a in r["chaos"].values()), r["chaos_log"]
    assert r["chaos"]["oom"]["done"] >= 2 and r["chaos"]["scale"]["done"] >= 1 \
        and r["chaos"]["edit"]["done"] >= 1, r["chaos_log"]
    assert r["requests"] >= 500, table
    # no growth: file descriptors (idle start vs idle end, and over the run) and memory
    start, end = r["runner_fds_start_end"]
    assert end - start <= 3, table
    assert r["runner_fds"]["growth"] <= 8, table
    rss = r["runner_rss"]
    assert rss["growth"] <= max(8 * MiB, 0.15 * rss["first_quarter_median"]), table
    assert r["supervisord_fds"]["growth"] <= 8, table
    assert proc.returncode == 0, table
