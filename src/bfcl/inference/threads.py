"""Moved to :mod:`bfcl.threads` (training follows the same rule, and training may not import
inference); the names stay importable from here."""

from __future__ import annotations

from bfcl.threads import *  # noqa: F401,F403
from bfcl.threads import __all__  # noqa: F401
