# Two entry points: `make demo` and `make test`. Both create the venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8050
# Debian packages the tests and benchmarks use (real servers and a real browser).
DEBIAN_PACKAGES := redis-server postgresql chromium chromium-driver nginx-light wrk valgrind

.PHONY: demo test test-unit test-fast bench fuzz-c system-deps clean

# pip also builds dashscale_local/http11/_fast.c (the proxy's C fast path) in place.
$(BIN)/.installed: setup.cfg setup.py pyproject.toml dashscale_local/http11/_fast.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[demo,test]'
	@# pip byte-compiles what it installs, but not an editable project; with
	@# PYTHONDONTWRITEBYTECODE set, every `dashscale start` would recompile it (~0.1 s).
	$(BIN)/python -m compileall -q dashscale_local
	touch $@

# Installs the Debian packages when missing (needs root or sudo; CI runs as root).
system-deps:
	@missing=""; \
	for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: $(BIN)/.installed
	$(BIN)/dashscale start -m web=4 --port $(PORT)

test: $(BIN)/.installed system-deps
	$(BIN)/python -m pytest -q

# tests/unit only: no replica, server, browser or venv started, no Debian package needed.
test-unit: $(BIN)/.installed
	$(BIN)/python -m pytest -q tests/unit

test-fast: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "not slow and not browser"

# Every benchmark, one after another (about 20 minutes; the soak alone is 10).
BENCHMARKS := bench_startup.py bench_demo.py bench_proxy.py bench_proxy_instructions.py \
	bench_memory_guard.py bench_idle.py \
	bench_reload.py bench_background.py bench_http11.py bench_podfs.py soak.py
bench: $(BIN)/.installed system-deps
	set -e; for b in $(BENCHMARKS); do echo "== $$b"; $(BIN)/python benchmarks/$$b; done

clean:
	rm -rf $(VENV) .dashscale

# The C fast path of the proxy's parser under AddressSanitizer + UBSan, fuzzed for 60 s.
fuzz-c: $(BIN)/.installed
	set -e; d=$$(mktemp -d); \
	inc=$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["include"])'); \
	gcc -shared -fPIC -O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer \
	  -I$$inc dashscale_local/http11/_fast.c -o $$d/_fast.so; \
	PYTHONMALLOC=malloc ASAN_OPTIONS=detect_leaks=0 \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  $(BIN)/python tests/fuzz_http11_fast.py $$d/_fast.so 60; rm -rf $$d
