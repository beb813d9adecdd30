"""Compiles the modules every statement runs through with mypyc (proxy/compiled.py; README: why).
SECKILL_PURE_PYTHON=1 installs them as plain Python; so does a machine without a C compiler
(the extensions are optional: setuptools skips one that fails to build, with a warning, and the
proxy logs at start how many of its hot modules run compiled).

mypyc must see every third-party class a compiled class derives from (pyproject.toml's build
requirements: prometheus-client): a base it cannot resolve is taken for a native one, and the
class then crashes at run time (seen with metrics.LabelCounter when the build ran before the
dependencies were installed)."""

import os
import runpy

from setuptools import setup

compiled = runpy.run_path(os.path.join("proxy", "compiled.py"))
compiled["remove_unlisted"]()  # a module taken off the list: its old build would shadow it
ext_modules = []
if os.environ.get("SECKILL_PURE_PYTHON") == "1":
    compiled["remove_built"]()
else:
    from mypyc.build import mypycify

    ext_modules = mypycify([f"proxy/{m}.py" for m in compiled["HOT"]], opt_level="3")
    for ext in ext_modules:
        ext.optional = True  # no compiler: plain Python, not a failed install
    compiled["record"]()

setup(ext_modules=ext_modules)
