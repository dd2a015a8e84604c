"""Shared numerics for the tests: the tolerances, the low-precision 2x rule and the input
layouts live in :mod:`mf_kernels.checking.numerics` (one home, also used by
``mf-kernels check``); this module re-exports them under the names the tests import.
"""
from mf_kernels.checking.numerics import *  # noqa: F401,F403
from mf_kernels.checking.numerics import __all__  # noqa: F401
