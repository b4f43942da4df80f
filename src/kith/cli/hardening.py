"""Process hardening for commands that unlock a profile.

An unlocked profile holds keys in this process's memory. If the process crashed, a core dump
(or a crash reporter such as systemd-coredump) would write that memory to disk, outside the
vault, where a forensic examiner finds it later. Before unlocking, the ``kith`` command
therefore forbids core dumps (RLIMIT_CORE = 0) and, on Linux, marks the process non-dumpable,
which also stops other processes of the same user from attaching a debugger to read its memory.
Both are best effort: failure to apply them is not fatal, and neither defends against root.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import resource
import sys

_PR_SET_DUMPABLE = 4


def forbid_core_dumps() -> bool:
    """Apply the protections; True if the process is now non-dumpable on Linux."""
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if not sys.platform.startswith("linux"):
        return False
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        return int(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False
