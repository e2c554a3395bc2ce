"""The former name of :mod:`minisr.backends.numba` (a package of one file per idea since issue 12): importing it
gives that very package, so ``from minisr.backends import numba_backend`` keeps working."""

import sys

from . import numba as _package

sys.modules[__name__] = _package
