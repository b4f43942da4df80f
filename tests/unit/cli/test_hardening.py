"""Commands that unlock a profile forbid core dumps before they unlock."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import ctypes, ctypes.util, resource
from kith.cli.hardening import forbid_core_dumps
libc = ctypes.CDLL(ctypes.util.find_library('c'))
before = libc.prctl(3, 0, 0, 0, 0)  # PR_GET_DUMPABLE
forbid_core_dumps()
after = libc.prctl(3, 0, 0, 0, 0)
print(resource.getrlimit(resource.RLIMIT_CORE), before, after)
"""


def test_core_dumps_are_forbidden_and_the_process_is_not_dumpable() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    assert out == ["(0,", "0)", "1", "0"], out
