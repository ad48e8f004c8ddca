"""The switch for http11's optional C fast path (``_fast.c``, built by pip when a C
compiler is there): ``accel.fast`` is the extension, or None for pure Python (no
compiler at install time, or ``DASHSCALE_HTTP11_PURE=1``). Tests and benchmarks set it.
"""
import os

try:
    from . import _fast as fast
except ImportError:  # pragma: no cover - depends on the install
    fast = None
if os.environ.get("DASHSCALE_HTTP11_PURE"):
    fast = None
