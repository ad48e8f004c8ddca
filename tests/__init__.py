"""The test suite. tests/unit: in-process (in-process servers on loopback and short
commands the code under test runs are fine). tests/e2e: real replicas, servers,
browsers, venvs, process trees or the `dashscale` command. Shared pieces stay here:
conftest.py (pytest applies it to both), apps/, fixtures/, helpers/, proxyharness.py,
venvs.py."""
import os

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
