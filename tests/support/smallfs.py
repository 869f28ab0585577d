"""A real small filesystem for a test: a tmpfs with a size limit, mounted by the test (the CI
machine runs as root) and always unmounted after it. Skipped, with the reason, where mounting is
not allowed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def small_fs(path: Path, size_mb: int) -> Iterator[Path]:
    """``path`` as a fresh ``size_mb`` MB tmpfs for the duration; ``pytest.skip`` if it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount command: a small filesystem cannot be made here")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a {size_mb} MB tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield path
    finally:
        # lazily: a process of the test that still has a file open there must not keep it mounted
        subprocess.run(["umount", "-l", str(path)], check=True)


def used_mb(path: Path) -> float:
    usage = shutil.disk_usage(path)
    return (usage.total - usage.free) / (1 << 20)
