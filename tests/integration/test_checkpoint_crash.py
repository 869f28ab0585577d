"""Crash safety: a process killed at any point of a save leaves the previous checkpoint valid,
``latest`` naming a valid checkpoint, and no partial ``step_*`` directory; one killed in the
middle of ``atomic_write_text`` leaves the old file whole.

Each test runs a real save in a subprocess and kills it (``os._exit`` at an injected point,
or SIGKILL once the child reports, through its stdout, that it is mid-write).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relaytrain.checkpoint import (
    TEMP_PREFIX,
    CheckpointManager,
    atomic_write_text,
    clean_temp,
    find_latest_valid,
    list_checkpoints,
    load_checkpoint,
    read_latest,
    verify,
)

PRELUDE = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from relaytrain.checkpoint import CheckpointManager
    from relaytrain.checkpoint import _fs, commit, manifest
    out = Path(sys.argv[1])
    manager = CheckpointManager(out)
    manager.save({"a.bin": b"one", "s.json": {"step": 1}}, 1)

    def crash(*args, **kwargs):
        os._exit(9)
""")

CRASH_POINTS = {
    # inside the trainer's own file writing, half a file on disk
    "writing files": """
        def half(path):
            path.write_bytes(b"partial")
            os._exit(9)
        manager.save({"a.bin": b"two", "z.bin": half}, 2)
    """,
    # files written, manifest not yet
    "before manifest": """
        manifest.atomic_write_bytes = crash
        manager.save({"a.bin": b"two"}, 2)
    """,
    # manifest written, not yet renamed into place
    "before rename": """
        commit.publish_dir = crash
        manager.save({"a.bin": b"two"}, 2)
    """,
    # renamed into place, latest not yet updated
    "before latest": """
        commit.write_latest = crash
        manager.save({"a.bin": b"two"}, 2)
    """,
    # re-saving step 1 over the committed step 1: the two copies were exchanged atomically,
    # the old one is not yet deleted
    "replacing the same step": """
        _fs.remove_tree = crash
        manager.save({"a.bin": b"two"}, 1)
    """,
}


def run_child(out: Path, body: str) -> subprocess.CompletedProcess[str]:
    code = PRELUDE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("point", list(CRASH_POINTS))
def test_crash_leaves_a_valid_latest_and_no_partial_step_dir(tmp_path, point) -> None:
    result = run_child(tmp_path, CRASH_POINTS[point])
    assert result.returncode == 9, result.stderr
    latest = read_latest(tmp_path)
    assert latest is not None and verify(tmp_path / latest).ok
    for step in list_checkpoints(tmp_path):
        assert verify(tmp_path / f"step_{step:08d}").ok, f"partial step {step} visible"
    found = find_latest_valid(tmp_path)
    if point == "before latest":
        assert found.step == 1 and list_checkpoints(tmp_path) == [1, 2]
    elif point == "replacing the same step":
        assert found.step == 1 and list_checkpoints(tmp_path) == [1]
        assert load_checkpoint(found.path)["a.bin"] == b"two"
    else:
        assert found.step == 1 and list_checkpoints(tmp_path) == [1]
        assert load_checkpoint(found.path)["a.bin"] == b"one"
    clean_temp(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    # and the run goes on: the next save works
    assert CheckpointManager(tmp_path).save({"a.bin": b"three"}, 3) == tmp_path / "step_00000003"


def test_sigkill_mid_write_leaves_previous_checkpoint(tmp_path) -> None:
    body = """
        def slow(path):
            with open(path, "wb") as handle:
                handle.write(b"x" * 4096)
                handle.flush()
                print("writing", flush=True)
                sys.stdin.readline()  # blocks until killed
        manager.save({"a.bin": b"two", "big.bin": slow}, 2)
    """
    child = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body), str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "writing"
        assert [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-step_00000002")]
    finally:
        child.kill()
        child.wait(timeout=60)
    assert child.returncode == -9
    assert list_checkpoints(tmp_path) == [1]
    assert read_latest(tmp_path) == "step_00000001"
    assert find_latest_valid(tmp_path).step == 1
    CheckpointManager(tmp_path)  # cleans the stale temporary
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_a_process_killed_mid_write_leaves_the_old_file_intact(tmp_path) -> None:
    path = tmp_path / "stack.json"
    atomic_write_text(path, "old\n")
    code = textwrap.dedent("""
        import os, sys
        from relaytrain.checkpoint import atomic_write_text
        os.fsync = lambda fd: os._exit(9)   # killed after writing, before the data is durable
        atomic_write_text(sys.argv[1], "new and longer\\n")
    """)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert done.returncode == 9, done.stderr
    assert path.read_text() == "old\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "stack.json"]
    assert len(leftovers) == 1 and leftovers[0].startswith(TEMP_PREFIX)
