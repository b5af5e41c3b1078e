"""Only the optional C extension lives here; everything else is in setup.cfg.

``optional=True``: without a compiler the install still succeeds, and crowtwist
uses its pure-Python fallback (same results, slower unmasking of large frames).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("crowtwist._speedups", ["crowtwist/_speedups.c"], optional=True)])
