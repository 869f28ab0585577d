"""The machine-level parts of the soak (bench/soak.py): a PostgreSQL server of its own, and a
small filesystem for one worker that can be filled on demand."""

from __future__ import annotations

import errno
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.commander import free_port

FILL_FILE = "soak-fill.bin"


# -- PostgreSQL of our own ------------------------------------------------------------------------


class PrivatePostgres:
    """A PostgreSQL server in a fresh folder on a free port, run as ``postgres`` when we are root."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.folder = Path(tempfile.mkdtemp(prefix="relay-soak-pg-"))
        self.data = self.folder / "data"
        self.log = self.folder / "postgres.log"
        self.port = free_port()
        self.running = False

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/relay"

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:  # initdb and postgres refuse root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout).strip()}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=300")
        self._run("pg_ctl", action, "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o", options,
                  *extra)

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._ctl("start")
        self.running = True
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute('CREATE DATABASE "relay"')
        return self

    def restart(self, mode: str) -> None:
        self._ctl("restart", "-m", mode)

    def stop(self, keep_log: Path | None = None) -> None:
        if self.running:
            self._ctl("stop", "-m", "immediate")
            self.running = False
        if keep_log is not None and self.log.exists():
            shutil.copy(self.log, keep_log)
        shutil.rmtree(self.folder, ignore_errors=True)


# -- a small filesystem for the disk worker -------------------------------------------------------


def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"mount -t tmpfs on {path} exited {done.returncode}: {done.stderr.strip()}")


def unmount(path: Path) -> None:
    """Unmount; lazily when a dying process still holds it."""
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=True)


def tmpfs_problem(root: Path) -> str | None:
    """None if this process can mount a tmpfs, else why not."""
    probe = root / "tmpfs-probe"
    try:
        mount_tmpfs(probe, 1)
    except OSError as exc:
        return str(exc)
    unmount(probe)
    return None


def fill(folder: Path) -> int:
    """Write zeros into ``folder``/FILL_FILE until the filesystem is full; the bytes written."""
    chunk, written = bytes(1 << 20), 0
    fd = os.open(folder / FILL_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            written += os.write(fd, chunk)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return written
