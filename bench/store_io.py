"""Store I/O benchmark: upload and download throughput of a ~1 GB checkpoint through
``S3Store`` to an S3 endpoint on loopback (moto in server mode, its own process), each divided
by raw boto3 ``upload_file`` / ``download_file`` of the same files in the same run.

    python -m bench.store_io                            # 1024 MiB in 4 files, 3 rounds
    python -m bench.store_io --size-mb 256 --repeats 5
    python -m bench.store_io --endpoint-url http://minio:9000 --bucket bench   # any S3 endpoint

| ratio    | ours                                          | divided by                             | target |
|----------|-----------------------------------------------|----------------------------------------|--------|
| upload   | ``put_checkpoint``: bucket check, claim,      | ``upload_file`` of every file of the   | >= 0.9 |
|          | multipart, every file hashed meanwhile,       | checkpoint (manifest included)         |        |
|          | HEAD of every object, conditional manifest    |                                        |        |
| download | ``get_checkpoint``: manifest, multipart GETs, | ``download_file`` of every file into a | >= 0.9 |
|          | re-hash of every byte, fsync, rename          | fresh folder                           |        |

Ratios are throughputs (ours ÷ raw), so 1.0 means no overhead. Both sides use the same boto3
client and the same ``TransferConfig`` (the store's: parts of ``--chunk-mb``, ``--concurrency``
at once), so the ratio isolates what the store adds. The two alternate, in swapped order each
round, and every round starts from an empty prefix (objects deleted, destination removed).
Medians over ``--repeats`` rounds; CPU seconds of this process and of the moto server are
printed too, since on a small shared machine client and server compete for the same cores.
The files are random bytes (``--files`` of them), written as a committed checkpoint under
``--dir``, deleted at the end. moto keeps objects in memory: allow about 3x the size in RAM.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 1 << 20


def build_checkpoint(root: Path, size_mb: int, files: int) -> Path:
    """A committed checkpoint of ``size_mb`` random bytes in ``files`` files (+ small ones)."""
    from relaytrain.checkpoint import CheckpointManager

    each = size_mb * MB // files
    state: dict[str, Any] = {f"model/model-{i + 1:05d}-of-{files:05d}.bin": os.urandom(each) for i in range(files)}
    state["trainer_state.json"] = {"step": 1}
    path = CheckpointManager(root).save(state, 1, epoch=1)
    assert path is not None
    return path


def server_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) the process ``pid`` has used; 0 if unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn: Callable[[], object], pid: int | None) -> tuple[float, float, float]:
    """``(wall s, CPU s of this process, CPU s of the server)`` of ``fn()``."""
    cpu, srv, start = time.process_time(), server_cpu(pid), time.perf_counter()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu, server_cpu(pid) - srv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="Checkpoint size (MiB).")
    parser.add_argument("--files", type=int, default=4, help="Large files it is split into.")
    parser.add_argument("--repeats", type=int, default=3, help="Rounds; medians are reported.")
    parser.add_argument("--chunk-mb", type=int, default=16, help="Multipart part size (MiB).")
    parser.add_argument("--concurrency", type=int, default=10, help="Parts in flight per file.")
    parser.add_argument("--dir", default=None, help="Folder for the local files (default: the temp dir).")
    parser.add_argument("--endpoint-url", default=None, help="Use this S3 endpoint instead of a moto server.")
    parser.add_argument("--bucket", default=None, help="Bucket on --endpoint-url (created if missing).")
    args = parser.parse_args(argv)

    from relaytrain.artifacts.s3 import S3Store, make_client

    server = None
    if args.endpoint_url is None:
        from tests.support.moto_server import MotoServer

        server = MotoServer().start()
        os.environ.update(server.env())
        endpoint = server.url
    else:
        endpoint = args.endpoint_url
    work = Path(tempfile.mkdtemp(prefix="relay-store-io-", dir=args.dir))
    try:
        client = make_client(endpoint, os.environ.get("AWS_DEFAULT_REGION", "us-east-1"), args.concurrency)
        bucket = args.bucket or f"relay-bench-{uuid.uuid4().hex[:8]}"
        if server is not None or args.bucket is None:
            client.create_bucket(Bucket=bucket)
        store = S3Store(bucket, "bench", client=client, multipart_threshold=args.chunk_mb * MB,
                        multipart_chunksize=args.chunk_mb * MB, max_concurrency=args.concurrency)
        local = build_checkpoint(work / "src", args.size_mb, args.files)
        names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        nbytes = sum((local / n).stat().st_size for n in names)
        raw_prefix = "raw/"

        def clear(prefix: str) -> None:
            keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                    for o in page.get("Contents", [])]
            for start in range(0, len(keys), 1000):
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})

        def ours_up() -> None:
            store.put_checkpoint(local, "run", 1)

        def raw_up() -> None:
            for name in names:
                client.upload_file(str(local / name), bucket, raw_prefix + name, Config=store.transfer_config)

        def ours_down() -> None:
            store.get_checkpoint("run", 1, work / "ours" / "step_00000001")

        def raw_down() -> None:
            for name in names:
                target = work / "raw" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, raw_prefix + name, str(target), Config=store.transfer_config)

        pid = server.pid if server is not None else None
        rounds: dict[str, list[tuple[float, float, float]]] = {
            "ours upload": [], "raw upload": [], "ours download": [], "raw download": []}
        load_before = os.getloadavg()[0]
        for index in range(args.repeats):
            for side in (("ours", "raw") if index % 2 == 0 else ("raw", "ours")):
                clear("bench/" if side == "ours" else raw_prefix)
                rounds[f"{side} upload"].append(timed(ours_up if side == "ours" else raw_up, pid))
            for side in (("ours", "raw") if index % 2 == 0 else ("raw", "ours")):
                shutil.rmtree(work / side, ignore_errors=True)
                rounds[f"{side} download"].append(timed(ours_down if side == "ours" else raw_down, pid))
            print(f"round {index + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in rounds.items()), flush=True)
        load_after = os.getloadavg()[0]
        clear("bench/")
        clear(raw_prefix)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if server is not None:
            server.stop()

    median = {name: statistics.median(v[0] for v in values) for name, values in rounds.items()}
    cpu = {name: statistics.median(v[1] for v in values) for name, values in rounds.items()}
    srv = {name: statistics.median(v[2] for v in values) for name, values in rounds.items()}
    print(f"\ncheckpoint: {nbytes / MB:.0f} MiB in {len(names)} files; parts {args.chunk_mb} MiB x "
          f"{args.concurrency}; endpoint {'moto server on loopback' if server is not None else endpoint}; "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {load_after:.1f}")
    print(f"{'measure':16} {'median s':>9} {'MB/s':>8} {'client cpu s':>13} {'server cpu s':>13}   rounds (s)")
    for name, value in median.items():
        print(f"{name:16} {value:9.2f} {nbytes / MB / value:8.1f} {cpu[name]:13.2f} {srv[name]:13.2f}   "
              + " ".join(f"{v[0]:.2f}" for v in rounds[name]))
    print()
    for kind in ("upload", "download"):
        ratio = median[f"raw {kind}"] / median[f"ours {kind}"]
        print(f"{kind + ' ratio':16} {ratio:9.2f}   (ours / raw boto3 throughput; target >= 0.9)")


if __name__ == "__main__":
    main()
