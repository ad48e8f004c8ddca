#!/usr/bin/env python3
"""A memory hog for the memory-guard tests and benchmark (stdlib only, Linux/macOS).

Shapes of process tree it can build (all in the caller's process group unless --setsid):

  master ─┬─ child 1..K      (--children K; they touch-read the --preload buffer, which the
          │                   master filled before forking: shared copy-on-write, like
          │                   gunicorn --preload)
          └─ child ── grandchild   (--grandchild MiB; the grandchild allocates; with
                                    --setsid it leaves the process group and session)

and how the master grows, after the tree is set up:

  --alloc MiB                      one step (one mapping, every page written at full speed)
  --step MiB --every MS --max MiB  gradual: STEP MiB every MS ms (fixed-rate) up to MAX MiB
  --commands                       read commands on stdin: "alloc N" (MiB, one step),
                                   "grow STEP EVERY MAX" (gradual, as the options),
                                   "free" (drop everything allocated), "exit";
                                   each command is answered with one JSON line on stdout

Protocol: after the tree is set up (every child has touched its memory) the master prints
one JSON line {"event": "ready", "pids": [...all pids of the tree...]} on stdout; after a
one-step or gradual allocation completes it prints {"event": "allocated", "bytes": N}. Then
every process idles until killed.

--mark FILE: the master appends "pid P" at start, "step T RSS" before each MiB it faults in
(RSS: its own resident bytes then, from /proc/self/statm), and "done T" when a growth
is complete. T is time.monotonic() (CLOCK_MONOTONIC: comparable across processes on
Linux). The moment the process crossed a limit L is, conservatively, the T of the last step
whose RSS was still < L (the MiB during which it crossed; RSS >= PSS for one process, so
this is never later than the PSS crossing). Works when the hog is killed mid-step.
"""
import argparse
import json
import mmap
import os
import signal
import sys
import time

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def fill(nbytes, mark=None):
    """One allocation of nbytes (an mmap), every page written so it is resident.

    The pages are faulted in 1 MiB at a time at full speed (≈0.7 ms per MiB here), so a
    mark file can log the moment the process crossed a limit to within ~1 ms even for a
    300 MiB "one step" allocation, which takes ~0.2 s of page faults in all.
    """
    if nbytes <= 0:
        return b""
    # a private anonymous mapping: nothing resident until written, copy-on-write across fork
    # (bytearray(n) would memset it all at once, bytes * n likewise)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)
    ones = b"\x01" * len(range(0, MiB, PAGE))
    for off in range(0, nbytes, MiB):
        if mark is not None:
            mark.write("step", repr(time.monotonic()), own_rss())
        end = min(off + MiB, nbytes)
        buf[off:end:PAGE] = ones[:len(range(off, end, PAGE))]
    return buf


def own_rss():
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:  # not Linux: fall back to the (coarser) ru_maxrss
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def idle_forever():
    while True:
        signal.pause()


class Mark:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600) if path else None

    def write(self, *words):
        if self.fd is not None:
            os.write(self.fd, (" ".join(map(str, words)) + "\n").encode())


def grow(held, mark, total, step=None, every_ms=10.0):
    """Allocate `total` bytes in one step (step None) or `step` bytes every `every_ms`."""
    step = step or total
    period = every_ms / 1000.0
    nxt = time.monotonic()
    done = 0
    while done + step <= total:
        held.append(fill(step, mark))
        done += step
        nxt += period
        delay = nxt - time.monotonic()
        if done + step <= total and delay > 0:
            time.sleep(delay)
    mark.write("done", repr(time.monotonic()))


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preload", type=float, default=0, help="MiB filled by the master before forking")
    ap.add_argument("--children", type=int, default=0)
    ap.add_argument("--dirty-on-usr1", action="store_true",
                    help="children write one byte per page of the preload on SIGUSR1 "
                         "(copy-on-write breaks: PSS grows, RSS does not)")
    ap.add_argument("--grandchild", type=float, default=None, help="MiB allocated by a grandchild")
    ap.add_argument("--setsid", action="store_true", help="the grandchild calls setsid()")
    ap.add_argument("--alloc", type=float, default=0, help="MiB allocated by the master in one step")
    ap.add_argument("--step", type=float, default=0, help="gradual: MiB per step")
    ap.add_argument("--every", type=float, default=10, help="gradual: ms between steps")
    ap.add_argument("--max", type=float, default=0, help="gradual: stop at this many MiB")
    ap.add_argument("--commands", action="store_true")
    ap.add_argument("--wait-usr1", action="store_true",
                    help="after the tree is set up, wait for SIGUSR1 before --alloc/--step")
    ap.add_argument("--mark")
    a = ap.parse_args(argv)

    if a.wait_usr1:  # blocked from the start, so an early signal waits for sigwait
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    mark = Mark(a.mark)
    mark.write("pid", os.getpid())
    n = int(a.preload * MiB)
    preload = fill(n)
    pids = [os.getpid()]

    # Each child writes one line "<pid>\n" (and grandchild pids) to this pipe once its memory
    # is in place: the master announces "ready" only after all of them.
    rfd, wfd = os.pipe()
    expected = 0
    sys.stdout.flush()
    for _ in range(a.children):
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            # touch-read every page of the shared buffer: pages stay shared (no write)
            _ = preload[::PAGE]
            if a.dirty_on_usr1:
                def dirty(signum, frame):
                    preload[::PAGE] = b"\x02" * len(range(0, n, PAGE))

                signal.signal(signal.SIGUSR1, dirty)
            os.write(wfd, b"%d\n" % os.getpid())
            os.close(wfd)
            idle_forever()
        expected += 1
    if a.grandchild is not None:
        pid = os.fork()
        if pid == 0:  # the child: forks the grandchild, then idles
            os.close(rfd)
            gpid = os.fork()
            if gpid == 0:
                if a.setsid:
                    os.setsid()
                held = fill(int(a.grandchild * MiB))  # noqa: F841 (kept alive)
                os.write(wfd, b"%d\n" % os.getpid())
                idle_forever()
            os.write(wfd, b"%d\n" % os.getpid())
            idle_forever()
        expected += 2
    os.close(wfd)
    buf = b""
    with os.fdopen(rfd, "rb") as r:
        while buf.count(b"\n") < expected:
            chunk = r.read1(4096) if hasattr(r, "read1") else os.read(r.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
    pids += [int(x) for x in buf.split()]
    emit({"event": "ready", "pids": pids})

    if a.wait_usr1:  # a trigger for runs where stdin is not ours (under supervisord)
        signal.sigwait({signal.SIGUSR1})
    held = []
    if a.alloc:
        grow(held, mark, int(a.alloc * MiB))
        emit({"event": "allocated", "bytes": sum(map(len, held))})
    if a.step:
        total = int(a.max * MiB) if a.max else 1 << 50  # no max: until killed
        grow(held, mark, total, int(a.step * MiB), a.every)
        emit({"event": "allocated", "bytes": sum(map(len, held))})
    if a.commands:
        for line in sys.stdin:
            cmd = line.split()
            if not cmd:
                continue
            if cmd[0] == "alloc":
                grow(held, mark, int(float(cmd[1]) * MiB))
            elif cmd[0] == "grow":
                step, every, total = float(cmd[1]), float(cmd[2]), float(cmd[3])
                grow(held, mark, int(total * MiB), int(step * MiB), every)
            elif cmd[0] == "free":
                held.clear()
            elif cmd[0] == "exit":
                return 0
            emit({"event": "ok", "cmd": cmd[0], "bytes": sum(map(len, held)), "rss": own_rss()})
    idle_forever()


if __name__ == "__main__":
    sys.exit(main())
