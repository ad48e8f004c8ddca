"""The test suite: tests/unit (no processes started) and tests/e2e (real replicas,
servers, browsers, venvs). Shared pieces stay here: conftest.py (both use it), apps/,
fixtures/, helpers/, proxyharness.py, venvs.py."""
import os

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
