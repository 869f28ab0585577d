"""The worker's log tail: the trainer's output files read into chunks whose offsets account for
every byte, in a queue bounded in bytes that drops its oldest chunks."""

from __future__ import annotations

from relaytrain.api.status import LogStream
from relaytrain.worker.logship import LogTail


def tail_of(tmp_path, **kwargs) -> tuple[LogTail, dict]:
    files = {LogStream.STDOUT: tmp_path / "stdout.log", LogStream.STDERR: tmp_path / "stderr.log"}
    return LogTail(files, clock=lambda: 7.0, **kwargs), files


def write(path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def shipped(tail: LogTail) -> str:
    return "".join(c["text"] for c in tail.queue)


def test_whole_lines_are_read_with_offsets_covering_both_streams(tmp_path):
    tail, files = tail_of(tmp_path, capacity=1 << 20)
    tail.read()  # no file yet
    write(files[LogStream.STDOUT], b"step 1\nstep 2\nhal")
    write(files[LogStream.STDERR], "warn é\n".encode())
    tail.read()
    assert [(c["seq"], c["stream"], c["text"], c["ts"]) for c in tail.queue] == [
        (0, "stdout", "step 1\nstep 2\n", 7.0), (14, "stderr", "warn é\n", 7.0)]
    write(files[LogStream.STDOUT], b"f\nlast words")
    tail.read()
    assert tail.queue[-1]["text"] == "half\n"
    tail.read(final=True)
    assert tail.queue[-1]["text"] == "last words"
    assert tail.offset == sum(c["bytes"] for c in tail.queue) == len("step 1\nstep 2\nhalf\nlast words") + 8
    assert tail.dropped == 0


def test_a_line_longer_than_a_chunk_is_split_without_breaking_a_character(tmp_path):
    tail, files = tail_of(tmp_path, capacity=1 << 20, chunk_bytes=16)
    text = "ééééééééééé-abc\n" + "short\n"  # the 2-byte é straddles the 16-byte cut
    write(files[LogStream.STDOUT], text.encode())
    tail.read(final=True)
    assert shipped(tail) == text and "\ufffd" not in shipped(tail)
    assert all(c["bytes"] <= 16 for c in tail.queue) and len(tail.queue) > 2
    chunks = list(tail.queue)
    assert [c["seq"] for c in chunks] == [sum(c["bytes"] for c in chunks[:i]) for i in range(len(chunks))]


def test_the_queue_keeps_the_newest_bytes_and_counts_what_it_drops(tmp_path):
    tail, files = tail_of(tmp_path, capacity=40, chunk_bytes=10)
    for i in range(20):
        write(files[LogStream.STDOUT], f"line {i:03d}\n".encode())  # 9 bytes each
        tail.read()
    assert tail.queued_bytes <= 40 and tail.queued_bytes == sum(c["bytes"] for c in tail.queue)
    assert shipped(tail) == "".join(f"line {i:03d}\n" for i in range(16, 20))
    assert tail.dropped == 16 * 9 and tail.offset == 20 * 9
    assert tail.queue[0]["seq"] == 16 * 9  # the gap before it is what was dropped


def test_a_burst_larger_than_the_queue_is_skipped_to_its_newest_bytes(tmp_path):
    tail, files = tail_of(tmp_path, capacity=30, chunk_bytes=10)
    write(files[LogStream.STDERR], b"".join(f"burst {i:02d}\n".encode() for i in range(50)))  # 9 bytes each
    tail.read()
    assert tail.offset == 450 and tail.dropped + tail.queued_bytes == 450
    assert tail.queued_bytes <= 30 and shipped(tail).endswith("burst 49\n")


def test_batches_are_sent_or_discarded_oldest_first(tmp_path):
    tail, files = tail_of(tmp_path, capacity=1000, chunk_bytes=10)
    write(files[LogStream.STDOUT], b"".join(f"n{i}\n".encode() for i in range(10)))  # 3 bytes each
    tail.read()
    batch = tail.batch(max_bytes=10)
    assert [c["text"] for c in batch] == ["n0\nn1\nn2\n"]
    tail.sent(len(batch))
    assert tail.queue[0]["text"] == "n3\nn4\nn5\n" and tail.dropped == 0
    tail.discard(1)
    assert tail.dropped == 9 and tail.queued_bytes == 12  # n6 to n9 left
    assert len(tail.batch(max_bytes=1)) == 1  # at least one chunk, however small the limit
