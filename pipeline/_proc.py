"""Stopping a child started with `start_new_session=True` (its own process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

__all__ = ["signal_group", "stop_process_group"]


def signal_group(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to the process's group (nothing if it is already gone)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def stop_process_group(
    process: subprocess.Popen | None, timeout_s: float, *, signalled: bool = False
) -> int | None:
    """SIGTERM the group (unless `signalled` already), wait up to `timeout_s`, then SIGKILL
    the group; returns the exit code (None without a process)."""
    if process is None:
        return None
    if process.poll() is not None:
        return process.returncode
    if not signalled:
        signal_group(process, signal.SIGTERM)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        signal_group(process, signal.SIGKILL)
        return process.wait(timeout=10)
