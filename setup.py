"""Compiles the modules every statement runs through with mypyc (proxy/compiled.py; README: why).
SECKILL_PURE_PYTHON=1 installs them as plain Python.

mypyc must see every third-party class a compiled class derives from (pyproject.toml's build
requirements: prometheus-client): a base it cannot resolve is taken for a native one, and the
class then crashes at run time (seen with metrics.LabelCounter when the build ran before the
dependencies were installed)."""

import os
import runpy

from setuptools import setup

compiled = runpy.run_path(os.path.join("proxy", "compiled.py"))
ext_modules = []
if os.environ.get("SECKILL_PURE_PYTHON") == "1":
    compiled["remove_built"]()
else:
    from mypyc.build import mypycify

    ext_modules = mypycify([f"proxy/{m}.py" for m in compiled["HOT"]], opt_level="3")
    compiled["record"]()

setup(ext_modules=ext_modules)
