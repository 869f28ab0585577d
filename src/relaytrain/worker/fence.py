"""The fence around a trainer's process tree: a small supervisor between the worker and the
trainer, so that everything a trainer starts dies with it and with its worker (DESIGN §6).

    worker ──► fence (this file, stdlib only) ──► trainer (a shell, torchrun, …) ──► its children

- It is a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a descendant orphaned by its parent
  — a double fork, a ``setsid`` daemon, torchrun's ranks after torchrun died — re-parents to
  the fence instead of to init, so the fence always finds the whole tree under itself
  (walking ``/proc``).
- It dies with the worker: ``PR_SET_PDEATHSIG`` delivers ``SIGUSR1`` when the worker dies for
  any reason (``kill -9`` included), and the fence then SIGKILLs every descendant before it
  exits. It also checks its parent every half second, in case that signal was missed.
- Signals from the worker: ``SIGTERM`` (and ``SIGINT``, ``SIGHUP``) are forwarded to every
  live descendant (a graceful stop); ``SIGUSR1`` kills the whole tree at once.
- Lease jeopardy (DESIGN §6): ``SIGUSR2`` pauses the tree: every descendant is SIGSTOPped, and
  again every ``PAUSED_SCAN_S`` while paused, so a process forked (or re-parented here) in the
  meantime ends up stopped too; ``SIGCONT`` resumes them all. The fence itself never stops: it
  still kills, forwards and watches its parent while the tree is paused.
- When the trainer exits, whatever it left behind is killed, and the fence exits the way the
  trainer did: the same exit code, or the same signal. A trainer that cannot be executed
  gives exit 127 and a ``FileNotFoundError:`` line on stderr (a permanent failure).

Run it by path, not as a module, so it starts without importing relaytrain::

    python -I -S fence.py --parent WORKER_PID -- ARGV...

The worker also marks the tree: every process in it inherits ``RELAY_FENCE_TOKEN`` (a
random token per attempt), and ``kill_marked`` finds and kills them by it — the backstop for a
fence that was itself killed (the OOM killer, say) before it could kill its tree.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
KILL_NOW = signal.SIGUSR1
PAUSE = signal.SIGUSR2
RESUME = signal.SIGCONT
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
WATCHED = (signal.SIGCHLD, KILL_NOW, PAUSE, RESUME, *FORWARDED)
PARENT_CHECK_S = 0.5
PAUSED_SCAN_S = 0.05
STOPPED_STATES = ("T", "t")
KILL_DEADLINE_S = 10.0
FENCE_ENV = "RELAY_FENCE_TOKEN"

_libc = ctypes.CDLL(None, use_errno=True)  # this process's own libc: no find_library (it runs ldconfig)


def prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl({option}, {value}): {os.strerror(errno)}")


def _process_table() -> Iterable[tuple[int, int, str]]:
    """``(pid, ppid, state)`` of every process visible in ``/proc``."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and ')'
        yield int(name), int(fields[1]), fields[0]


def children(pid: int) -> list[int]:
    """The live (not zombie) children of ``pid``."""
    return [child for child, parent, state in _process_table() if parent == pid and state != "Z"]


def descendants(root: int) -> list[int]:
    """The live (not zombie) descendants of ``root``, parents before children."""
    return [pid for pid, _ in _descendant_states(root)]


def _descendant_states(root: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of the live descendants of ``root``, parents before children."""
    children: dict[int, list[int]] = {}
    state: dict[int, str] = {}
    for pid, ppid, st in _process_table():
        children.setdefault(ppid, []).append(pid)
        state[pid] = st
    found, frontier = [], [root]
    while frontier:
        nxt = []
        for pid in frontier:
            for child in children.get(pid, ()):
                if state[child] != "Z":
                    found.append((child, state[child]))
                nxt.append(child)
        frontier = nxt
    return found


def stop_tree(root: int) -> int:
    """SIGSTOP every live descendant of ``root`` not stopped yet; returns how many were running.
    A process forking while this runs may leave a running child: call again until it returns 0."""
    running = [pid for pid, state in _descendant_states(root) if state not in STOPPED_STATES]
    signal_all(running, signal.SIGSTOP)
    return len(running)


def signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def reap(on_exit: dict[int, int] | None = None) -> bool:
    """Collect every exited child without blocking, recording their statuses in ``on_exit``;
    True while this process still has children."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return False
        if pid == 0:
            return True
        if on_exit is not None:
            on_exit[pid] = status


def kill_tree(*, deadline_s: float = KILL_DEADLINE_S, on_exit: dict[int, int] | None = None) -> bool:
    """SIGKILL every descendant of this process until it has no child left, not even a zombie.

    Orphans re-parent here (the subreaper), so "no child" is the kernel's word that the tree is
    empty; a scan of ``/proc`` alone is not (a process may be between a dying parent and us).
    One that forks meanwhile is caught by the next pass. True once the tree is empty."""
    end = time.monotonic() + deadline_s
    while reap(on_exit):
        if time.monotonic() > end:
            return False
        signal_all(descendants(os.getpid()), signal.SIGKILL)
        signal.sigtimedwait([signal.SIGCHLD], 0.02)  # the next death, or a short pause
    return True


def marked(token: str) -> list[int]:
    """Processes (other than this one) whose environment carries ``FENCE_ENV=token``."""
    needle = f"{FENCE_ENV}={token}".encode()
    found = []
    for pid, _, state in _process_table():
        if pid == os.getpid() or state == "Z":
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if needle in handle.read().split(b"\0"):
                    found.append(pid)
        except OSError:  # gone, or not ours to read
            continue
    return found


def kill_marked(token: str, *, deadline_s: float = KILL_DEADLINE_S) -> list[int]:
    """SIGKILL every process marked with ``token`` until none is left; returns those killed."""
    killed: list[int] = []
    end = time.monotonic() + deadline_s
    while (live := marked(token)) and time.monotonic() < end:
        signal_all(live, signal.SIGKILL)
        killed += [pid for pid in live if pid not in killed]
        time.sleep(0.01)  # they are not our children: wait for the kernel to end them
    return killed


def _exec_child(argv: list[str]) -> None:
    """In the forked child: unblock signals, die with the fence, become the trainer."""
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"FileNotFoundError: cannot execute {argv[0]!r}: {exc.strerror or exc}\n".encode())
    finally:
        os._exit(127)


def _exit_like(status: int) -> None:
    """Exit the way a child with wait ``status`` did: its code, or its signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.kill(os.getpid(), sig)
        sys.exit(128 + sig)  # not reached for a deadly signal
    sys.exit(os.waitstatus_to_exitcode(status))


def supervise(parent: int, argv: list[str]) -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, WATCHED)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, KILL_NOW)
    if os.getppid() != parent:  # the worker died before the death signal was armed
        sys.exit(1)
    trainer = os.fork()
    if trainer == 0:
        _exec_child(argv)
    exited: dict[int, int] = {}
    paused = False
    while trainer not in exited:
        info = signal.sigtimedwait(WATCHED, PAUSED_SCAN_S if paused else PARENT_CHECK_S)
        reap(exited)  # whatever woke us: a SIGCHLD may have been taken by kill_tree's wait
        if info is None:
            if os.getppid() != parent:  # the worker is gone and the death signal was missed
                kill_tree(on_exit=exited)
        elif info.si_signo == KILL_NOW:
            kill_tree(on_exit=exited)
        elif info.si_signo == PAUSE:
            paused = True
        elif info.si_signo == RESUME:
            paused = False
            signal_all(descendants(os.getpid()), signal.SIGCONT)
        elif info.si_signo != signal.SIGCHLD:
            signal_all(descendants(os.getpid()), info.si_signo)
        if paused:
            stop_tree(os.getpid())  # again at every wake: a process forked meanwhile is stopped too
    kill_tree()  # whatever the trainer left behind
    _exit_like(exited[trainer])


def main(args: list[str]) -> None:
    if len(args) < 4 or args[0] != "--parent" or args[2] != "--":
        sys.exit("usage: fence.py --parent PID -- ARGV...")
    supervise(int(args[1]), args[3:])


if __name__ == "__main__":
    main(sys.argv[1:])
