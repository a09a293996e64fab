"""Builds the optional compiled pass of the exact PWR path on a CPU (insightface_pwr/heads/_pwr_cpu.c, loaded with
ctypes by insightface_pwr/heads/pwr_cpu.py: no Python or torch API, so one build serves every Python and torch).
Everything else about the package is in setup.cfg. Without a C compiler the package installs without it and the
vectorised path runs instead."""
import sys

from setuptools import Extension, setup

setup(ext_modules=[Extension("insightface_pwr.heads._pwr_cpu", ["insightface_pwr/heads/_pwr_cpu.c"],
                             extra_compile_args=["-O3"], libraries=[] if sys.platform == "win32" else ["m"],
                             optional=True)])
