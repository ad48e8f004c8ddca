"""Random-mutation fuzzing of the C fast path under AddressSanitizer (not a pytest file).

    make fuzz-c   # builds dashscale_local/http11/_fast.c with ASan+UBSan in a temp
                  # dir, runs this

Feeds mutated request and response heads to the three C functions for SECONDS (default
60) and checks they return None or a tuple, never crash, read out of bounds (ASan, with
PYTHONMALLOC=malloc so that each bytes object has its own red zones) or leak objects
(tracemalloc). Whether an answer is *right* is tests/unit/test_http11_accel.py's job.
"""
import importlib.util
import random
import sys
import time
import tracemalloc

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8050\r\nConnection: keep-alive\r\nContent-Length: 5"
    b"\r\nX-A: b\r\n\r\n",
    b"POST /x?y HTTP/1.0\r\nConnection: close, keep-alive\r\nkeep-alive: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nServer: g\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.0 304 N\r\nContent-Length: 010\r\nX-Dashscale-A: 1\r\n\r\n",
]
ALPHABET = b"\r\n :\t,0123456789aAzZ-_/?%#\x00\x7f\x80\xff"


def mutate(rnd, b):
    b = bytearray(b)
    for _ in range(rnd.randint(0, 6)):
        op = rnd.random()
        i = rnd.randint(0, len(b)) if b else 0
        if op < 0.4 and b:
            b[min(i, len(b) - 1)] = rnd.choice(ALPHABET)
        elif op < 0.7:
            b[i:i] = bytes([rnd.choice(ALPHABET)]) * rnd.randint(1, 3)
        elif b:
            del b[i:i + rnd.randint(1, 4)]
    if rnd.random() < 0.3:
        b = b[:rnd.randint(0, len(b))]
    return bytes(b)


def run(fast, seconds, rnd):
    n = answers = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for seed in SEEDS:
            d = mutate(rnd, seed)
            for lim in (8192, 20, 3):
                for r in (fast.parse_request_head(d, lim, lim * 8, lim, 1 << 40),
                          fast.parse_response_head(d, lim * 8),
                          fast.client_response(d, rnd.random() < 0.3, rnd.random() < 0.5,
                                               rnd.random() < 0.5, b"X: y\r\n", lim * 8)):
                    assert r is None or type(r) is tuple, r
                    answers += r is not None
            n += 1
    return n, answers


def main(path, seconds=60.0):
    spec = importlib.util.spec_from_file_location("_fast", path)
    fast = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fast)
    rnd = random.Random(1)
    run(fast, 1, rnd)  # warm up: interned constants, caches
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    n, answers = run(fast, seconds, rnd)
    grown = tracemalloc.get_traced_memory()[0] - before
    print(f"{n} inputs, {answers} answers, memory grown {grown} bytes")
    assert grown < 64 * 1024, "the C fast path leaks"


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 60.0)
