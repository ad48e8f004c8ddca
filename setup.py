"""Only for the optional C fast path of the HTTP parser; everything else is in setup.cfg.

``optional=True``: without a C compiler the install still succeeds and http11 uses its
pure-Python path (the same results, slower; ``dashscale doctor``-style checks and the
tests say which one is in use).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("dashscale_local.http11._fast",
                             ["dashscale_local/http11/_fast.c"], optional=True)])
