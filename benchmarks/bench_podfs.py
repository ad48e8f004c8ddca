"""A pod's own disk against --shared-fs: start-up (`dashscale start -m web=2` until both
replicas answer through the proxy), rolling restart (`dashscale restart web --rolling`),
the extra disk under .dashscale/ and the replicas' memory (Σ PSS), on the sample app and
on the sample app with a 1 GiB data file beside it. Modes alternate round by round in one
run; the ratios are against --shared-fs (goal: ≤ 1.1).

    python benchmarks/bench_podfs.py [--rounds 3] [--modes shared,pod,copy]

The 1 GiB file is written once to ~/.cache/dashscale-bench/ and hard-linked (or copied
once) into the project: a real file, not a sparse one.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_startup import get, stop, wait_until  # noqa: E402
from dashscale_local.testing import free_port, free_port_block  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROCFILE = "web: gunicorn sample_app.app:server --workers 1\n"
CACHE = os.path.expanduser("~/.cache/dashscale-bench")
GIB = 1 << 30
# mode → the start options and dashscale.ini lines that select it
MODES = {"shared": (["--shared-fs"], ""), "pod": ([], ""), "copy": ([], "pod_disk = copy\n")}


def data_file():
    """A real 1 GiB file of random-ish bytes, written once and kept in the cache."""
    path = os.path.join(CACHE, "data-1GiB.bin")
    if os.path.exists(path) and os.path.getsize(path) == GIB:
        return path
    os.makedirs(CACHE, exist_ok=True)
    block = os.urandom(1 << 20)
    with open(path + ".tmp", "wb") as f:
        for _ in range(1024):
            f.write(block)
    os.replace(path + ".tmp", path)
    return path


def project(with_data):
    d = tempfile.mkdtemp(prefix="dsbench-podfs-")
    shutil.copytree(os.path.join(REPO, "sample_app"), os.path.join(d, "sample_app"))
    with open(os.path.join(d, "Procfile"), "w") as f:
        f.write(PROCFILE)
    if with_data:
        target = os.path.join(d, "data.bin")
        try:
            os.link(data_file(), target)
        except OSError:
            shutil.copyfile(data_file(), target)
    return d


def cli(d, marker, *args):
    env = dict(os.environ, DASHSCALE_RUN_ID=marker, PYTHONUNBUFFERED="1")
    return subprocess.run([sys.executable, "-m", "dashscale_local.cli", *args, "--procfile",
                           os.path.join(d, "Procfile")], cwd=d, env=env, capture_output=True,
                          text=True, timeout=120)


def extra_disk(d):
    """Bytes allocated under .dashscale/deploys and pods that the project's own files do
    not already hold (hard links to them cost nothing)."""
    own = {os.stat(os.path.join(root, f)).st_ino for root, dirs, files in os.walk(d)
           if ".dashscale" not in root for f in files}
    total = 0
    for sub in ("deploys", "pods"):
        for root, dirs, files in os.walk(os.path.join(d, ".dashscale", sub)):
            for name in files + dirs:
                st = os.lstat(os.path.join(root, name))
                if st.st_ino not in own:
                    total += st.st_blocks * 512
    return total


def one_round(d, mode, n=2):
    """(start-up s, rolling restart s, extra disk bytes, Σ PSS bytes) for one mode."""
    options, ini = MODES[mode]
    with open(os.path.join(d, "dashscale.ini"), "w") as f:
        f.write("[dashscale]\n" + ini)
    port, base = free_port(), free_port_block()
    marker = f"bench-podfs-{time.time()}"
    env = dict(os.environ, DASHSCALE_RUN_ID=marker, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "dashscale_local.cli", "start", "-m",
                             f"web={n}", "--port", str(port), "--base-port", str(base),
                             *options], cwd=d, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    seen = set()

    def all_answer():
        for _ in range(n):
            status, replica = get(port)
            if not replica:
                break
            seen.add(replica)
        return len(seen) == n
    try:
        wait_until(all_answer)
        startup = time.monotonic() - t0
        t1 = time.monotonic()
        result = cli(d, marker, "restart", "web", "--rolling")
        roll = time.monotonic() - t1
        if result.returncode:
            raise RuntimeError(result.stderr)
        status = json.loads(cli(d, marker, "status", "--json").stdout)
        assert status["filesystem"]["mode"] == {"pod": "overlay"}.get(mode, mode), status
        return startup, roll, extra_disk(d), status["memory"]["total_bytes"]
    finally:
        stop(proc, marker)


def fixed_costs(d, rounds=5):
    """Median seconds of what a pod adds, measured alone: a deploy (the snapshot), and
    each spawn's set-up (wipe, namespace, overlay mount or copy) before the launcher."""
    from dashscale_local.podfs import Pods
    run_dir = os.path.join(d, ".dashscale")
    launch = os.path.join(run_dir, "launch")
    os.makedirs(launch, mode=0o700, exist_ok=True)
    with open(os.path.join(launch, "web.1.sh"), "w") as f:
        f.write("test -f Procfile\n")   # the launcher: just check it runs in the app's view
    costs = {}
    for mode in ("overlay", "copy"):
        pods = Pods(d, run_dir, {"pod_disk": mode})
        pods.prepare()
        costs["deploy"] = statistics.median(_seconds(pods.deploy) for _ in range(rounds))
        entry = pods.entry(launch, "web.1")
        costs[mode] = statistics.median(
            _seconds(subprocess.run, ["/bin/sh", entry], check=True) for _ in range(rounds))
        pods.cleanup()
    costs["sh"] = statistics.median(_seconds(subprocess.run, ["/bin/sh", "-c", "true"])
                                    for _ in range(rounds))
    return costs


def _seconds(fn, *args, **kwargs):
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="shared,pod,copy")
    args = parser.parse_args()
    modes = args.modes.split(",")
    print(f"kernel {os.uname().release}, uid {os.geteuid()}, {args.rounds} rounds, web=2; "
          "median seconds (median of the rounds' own ratios to the first mode)")
    for label, with_data in (("sample app", False), ("sample app + 1 GiB file", True)):
        d = project(with_data)
        try:
            costs = fixed_costs(d)
            results = {m: [] for m in modes}
            for _ in range(args.rounds):
                for mode in modes:
                    results[mode].append(one_round(d, mode))
        finally:
            shutil.rmtree(d, ignore_errors=True)
        print(f"\n{label}")
        print(f"  {'mode':8} {'start-up':>16} {'rolling restart':>18} {'extra disk':>12} "
              f"{'Σ PSS':>10}")
        for mode in modes:
            start, roll = (statistics.median(x[i] for x in results[mode]) for i in range(2))
            # each round runs the modes back to back: its own ratio cancels slow drift
            ratios = [statistics.median(x[i] / a[i] for x, a in
                                        zip(results[mode], results[modes[0]])) for i in range(2)]
            disk = max(x[2] for x in results[mode])
            pss = statistics.median(x[3] for x in results[mode])
            print(f"  {mode:8} {start:7.2f}s ({ratios[0]:4.2f}×) "
                  f"{roll:9.2f}s ({ratios[1]:4.2f}×) {disk / 1024:9.0f} KiB "
                  f"{pss / (1 << 20):7.0f} MiB")
        print(f"  alone: a deploy (snapshot) {costs['deploy'] * 1000:.1f} ms; a pod's set-up "
              f"per spawn: overlay {costs['overlay'] * 1000:.1f} ms, copy "
              f"{costs['copy'] * 1000:.1f} ms (sh -c true: {costs['sh'] * 1000:.1f} ms)")


if __name__ == "__main__":
    main()
