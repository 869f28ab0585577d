"""``S3Store``: checkpoints in S3 or any S3-compatible store (MinIO, R2, Ceph, moto).

Layout (``prefix`` may be empty)::

    <prefix>/<run_id>/checkpoints/step_<N:08d>/<files>        data objects, each with x-amz-meta-sha256
    <prefix>/<run_id>/checkpoints/step_<N:08d>/manifest.json  the commit: written last, conditionally
    <prefix>/<run_id>/checkpoints/.claims/step_<N:08d>.json   who may write step N: manifest sha256, epoch
    <prefix>/<run_id>/files/<name>                            ``put_file`` / ``get_file``

A checkpoint exists only if its manifest object exists. ``put_checkpoint``:

1. checks the bucket (a missing bucket or bad credentials fail here, before anything is written);
2. takes the step's *claim*, a small object put with ``If-None-Match: *``. A claim naming the
   same manifest is shared (a retry, or an identical copy); a claim naming another manifest
   is refused, unless ours was written under a higher epoch (the lease's fencing token,
   recorded in the manifest), which takes the claim over with ``If-Match: <its ETag>``;
3. uploads every file not already stored intact (multipart above ``multipart_threshold``,
   parts read by the transfer threads, each part checksummed by the SDK — CRC32 by default
   in boto3 ≥ 1.36 — and checked by the store on receipt) with the sha256 in the object's
   metadata; the file's sha256 is computed on another thread meanwhile and must equal the
   manifest's, or the object is deleted and the upload fails;
4. checks every object with HEAD (size and ``x-amz-meta-sha256`` against the manifest);
5. puts ``manifest.json`` with ``If-None-Match: *`` and reads it back: of two writers of one
   step, at most one ever commits; the other gets an ArtifactError.

Conditional writes need a store that implements them (AWS S3 since 2024, MinIO, R2, moto;
moto evaluates them without a lock, so its test server serializes conditional requests).
The read-backs after each conditional put also catch a store that ignores the headers
when the two writers are not simultaneous.

Downloads go into ``.tmp-step_<N>-s3-<manifest sha>`` next to the destination: files
already there (or in the destination) with the right size and sha256 are kept, a partial
file resumes with a ranged GET, every file is re-hashed, and the folder is renamed into
place only when complete. An interrupted download is resumed by the next call.

boto3 is imported when a store is created: this module imports without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from relaytrain.artifacts._transfer import (
    MB,
    OffsetWriter,
    TransferProgress,
    assemble_checkpoint,
    local_manifest,
    sha256_file,
    stored_files,
)
from relaytrain.artifacts.base import ArtifactStore, ProgressFn, check_run_id
from relaytrain.checkpoint import (
    MANIFEST_NAME,
    Verification,
    discard_on_error,
    fsync_path,
    parse_manifest,
    step_dir_name,
    temp_sibling,
)
from relaytrain.errors import ArtifactError, ArtifactMissing, CheckpointError, StaleWriter

log = logging.getLogger(__name__)

SHA_KEY = "sha256"
"""Object metadata key (``x-amz-meta-sha256``) holding the object's sha256."""
_MANIFEST_KEY_RE = re.compile(r"step_(\d{8,})/manifest\.json")
_AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                         "InvalidToken", "AuthorizationHeaderMalformed", "403", "401"})
_RACE_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412", "409"})


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; ArtifactError if malformed."""
    parsed = urlparse(uri)
    if parsed.scheme.lower() != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
        raise ArtifactError(f"{uri}: not an S3 URI; expected s3://bucket[/prefix]")
    prefix = parsed.path.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ArtifactError(f"{uri}: the prefix must be a plain path like s3://bucket/team/relay")
    return parsed.netloc, prefix


def make_client(endpoint_url: str | None = None, region: str | None = None, max_concurrency: int = 10) -> Any:
    """A boto3 S3 client: credentials, region and endpoint from the standard AWS configuration
    (environment, ``~/.aws``, instance role, ``AWS_ENDPOINT_URL_S3``) unless given here."""
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5},
                    max_pool_connections=max(10, max_concurrency + 4), region_name=region)
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)


class S3Store(ArtifactStore):
    """An artifact store under ``s3://bucket/prefix``.

    Args:
        bucket: the bucket (it must exist; the store never creates one).
        prefix: a key prefix under which runs live ("" for the bucket's root).
        endpoint_url: an S3-compatible endpoint (MinIO, R2, …); default: the AWS configuration.
        region: the region; default: the AWS configuration.
        multipart_threshold: files at least this big are uploaded and downloaded in parts.
        multipart_chunksize: the size of one part.
        max_concurrency: parts in flight at once, per file.
        client: a ready boto3 S3 client (then ``endpoint_url`` and ``region`` are ignored).
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, multipart_threshold: int = 64 * MB,
                 multipart_chunksize: int = 16 * MB, max_concurrency: int = 10, client: Any = None) -> None:
        from boto3.s3.transfer import TransferConfig

        if not bucket:
            raise ArtifactError("S3 store needs a bucket name")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else make_client(endpoint_url, region, max_concurrency)
        self.transfer_config = TransferConfig(multipart_threshold=multipart_threshold,
                                              multipart_chunksize=multipart_chunksize,
                                              max_concurrency=max_concurrency, use_threads=True)
        self._max_concurrency = max_concurrency

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> S3Store:
        """The store at ``s3://bucket[/prefix]``; ``options`` as for the constructor."""
        bucket, prefix = parse_s3_uri(uri)
        return cls(bucket, prefix, **options)

    def __repr__(self) -> str:
        return f"S3Store({self.uri!r}, endpoint={self.endpoint!r})"

    @property
    def uri(self) -> str:
        """``s3://bucket/prefix``."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def endpoint(self) -> str:
        """The endpoint URL the client talks to."""
        return str(getattr(self.client.meta, "endpoint_url", "") or "the default AWS endpoint")

    # -- keys ---------------------------------------------------------------------------------

    def _run_key(self, run_id: str) -> str:
        check_run_id(run_id)
        return f"{self.prefix}/{run_id}" if self.prefix else run_id

    def _step_key(self, run_id: str, step: int) -> str:
        return f"{self._run_key(run_id)}/checkpoints/{step_dir_name(step)}/"

    def _claim_key(self, run_id: str, step: int) -> str:
        return f"{self._run_key(run_id)}/checkpoints/.claims/{step_dir_name(step)}.json"

    def uri_for(self, run_id: str, step: int) -> str:
        """``s3://bucket/<prefix>/<run_id>/checkpoints/step_<N>``."""
        return f"s3://{self.bucket}/{self._step_key(run_id, step).rstrip('/')}"

    # -- low-level calls, with errors that name the bucket and endpoint ------------------------

    def _error(self, exc: Exception, what: str) -> ArtifactError:
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = f"bucket {self.bucket!r} at {self.endpoint}"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code in ("NoSuchBucket", "404", "NotFound"):
                return ArtifactError(f"{what}: {where} does not exist")
            if code in _AUTH_CODES:
                return ArtifactError(f"{what}: access to {where} denied ({code}); check the credentials "
                                     "(AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws)")
            return ArtifactError(f"{what}: {where}: {code}: {error.get('Message', exc)}")
        if isinstance(exc, NoCredentialsError):
            return ArtifactError(f"{what}: no AWS credentials found for {where} (environment, AWS_PROFILE, ~/.aws)")
        if isinstance(exc, EndpointConnectionError):
            return ArtifactError(f"{what}: cannot reach {self.endpoint} for bucket {self.bucket!r}: {exc}")
        return ArtifactError(f"{what}: {where}: {type(exc).__name__}: {exc}")

    def _call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:
            raise self._error(exc, what) from exc

    def _is(self, exc: Exception, codes: frozenset[str] | set[str]) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        return code in codes or status in codes

    def check_bucket(self, what: str) -> None:
        """Raise ArtifactError naming the bucket and endpoint unless the bucket is reachable."""
        self._call(what, self.client.head_bucket)

    def _head(self, key: str, what: str) -> dict[str, Any] | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if self._is(exc, {"404", "NoSuchKey", "NotFound"}):
                return None
            raise self._error(exc, what) from exc

    def _get_bytes(self, key: str, what: str) -> tuple[bytes, str] | None:
        """``(body, ETag)`` of a small object, or None if it does not exist."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            return response["Body"].read(), response["ETag"]
        except Exception as exc:
            if self._is(exc, {"NoSuchKey"}):
                return None
            raise self._error(exc, what) from exc

    def _put_if(self, key: str, body: bytes, what: str, **condition: str) -> bool:
        """Put ``body`` under ``key`` if ``condition`` (IfNoneMatch / IfMatch) holds; False if not."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json",
                                   Metadata={SHA_KEY: hashlib.sha256(body).hexdigest()}, **condition)
            return True
        except Exception as exc:
            if self._is(exc, _RACE_CODES):
                return False
            raise self._error(exc, what) from exc

    def _keys(self, prefix: str, what: str, delimiter: str | None = None) -> list[str]:
        """Every key (or, with ``delimiter``, every common prefix) under ``prefix``."""
        options = {"Prefix": prefix} | ({"Delimiter": delimiter} if delimiter else {})
        found: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, **options):
                if delimiter:
                    found.extend(item["Prefix"] for item in page.get("CommonPrefixes", []))
                else:
                    found.extend(item["Key"] for item in page.get("Contents", []))
        except Exception as exc:
            raise self._error(exc, what) from exc
        return found

    def _delete_keys(self, keys: list[str], what: str) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[start:start + 1000]]
            response = self._call(what, self.client.delete_objects, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                first = response["Errors"][0]
                raise ArtifactError(f"{what}: {first.get('Key')}: {first.get('Code')}: {first.get('Message')}")

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        if len(items) <= 1:
            return [fn(item) for item in items]
        with ThreadPoolExecutor(min(self._max_concurrency, len(items)), thread_name_prefix="relay-s3") as pool:
            return list(pool.map(fn, items))

    def object_problem(self, key: str, name: str, entry: Mapping[str, Any], what: str) -> str | None:
        """Why the object at ``key`` is not the manifest's ``entry`` (HEAD: size, sha256), or None."""
        head = self._head(key, what)
        if head is None:
            return f"{name}: missing"
        if head["ContentLength"] != entry["size"]:
            return f"{name}: size {head['ContentLength']} != {entry['size']}"
        if head.get("Metadata", {}).get(SHA_KEY) != entry["sha256"]:
            return f"{name}: sha256 mismatch (x-amz-meta-sha256 {head.get('Metadata', {}).get(SHA_KEY)!r})"
        return None

    def _problems(self, base: str, files: Mapping[str, Any], what: str) -> dict[str, str]:
        names = sorted(files)
        found = self._map(lambda name: self.object_problem(base + name, name, files[name], what), names)
        return {name: problem for name, problem in zip(names, found, strict=True) if problem}

    # -- upload -------------------------------------------------------------------------------

    def _claim(self, run_id: str, step: int, sha: str, epoch: Any, uri: str) -> None:
        """Own the right to write step ``step`` for the manifest ``sha`` (see the module doc)."""
        key = self._claim_key(run_id, step)
        body = json.dumps({"manifest_sha256": sha, "epoch": epoch,
                           "claimed_at": datetime.now(UTC).isoformat(timespec="seconds")}).encode()
        what = f"claiming {uri}"
        for _ in range(5):
            current = self._get_bytes(key, what)
            if current is None:
                if self._put_if(key, body, what, IfNoneMatch="*"):
                    break
                continue
            held = _json_object(current[0])
            if held.get("manifest_sha256") == sha:
                return
            if not _newer(epoch, held.get("epoch")):
                stale = _newer(held.get("epoch"), epoch)
                raise (StaleWriter if stale else ArtifactError)(
                    f"{uri}: step {step} is claimed by another writer (manifest sha256 "
                    f"{str(held.get('manifest_sha256'))[:12]}…, epoch {held.get('epoch')}); refusing to overwrite it "
                    "(delete that checkpoint from the store first if it was abandoned)")
            if self._put_if(key, body, what, IfMatch=current[1]):
                log.warning("%s: taking step %d over from epoch %s (epoch %s is newer)", uri, step,
                            held.get("epoch"), epoch)
                break
        else:
            raise ArtifactError(f"{uri}: lost the race for step {step} to a concurrent writer")
        self._check_claim(key, sha, uri)

    def _check_claim(self, key: str, sha: str, uri: str) -> None:
        current = self._get_bytes(key, f"checking the claim of {uri}")
        held = _json_object(current[0]) if current else {}
        if held.get("manifest_sha256") != sha:
            raise StaleWriter(f"{uri}: another writer took this step over (manifest sha256 "
                                f"{str(held.get('manifest_sha256'))[:12]}…, epoch {held.get('epoch')}); "
                                "upload abandoned")

    def put_checkpoint(self, local_dir: str | os.PathLike[str], run_id: str, step: int,
                       progress: ProgressFn | None = None) -> str:
        """Upload the committed checkpoint at ``local_dir`` and commit it (see the module doc).

        Objects already stored intact are not sent again, so re-running an interrupted upload
        resumes it; re-uploading a committed, intact checkpoint changes nothing. Raises
        ArtifactError if another writer owns or committed this step with another manifest.
        """
        src = Path(local_dir)
        manifest_data, manifest = local_manifest(src, step)
        sha = hashlib.sha256(manifest_data).hexdigest()
        uri = self.uri_for(run_id, step)
        base = self._step_key(run_id, step)
        epoch = manifest.get("epoch")
        self.check_bucket(f"uploading to {uri}")
        self._check_committed(base, sha, epoch, uri)
        self._claim(run_id, step, sha, epoch, uri)
        files = manifest["files"]
        stored = self._check_committed(base, sha, epoch, uri)
        if stored is not None and hashlib.sha256(stored).hexdigest() == sha:
            todo = self._problems(base, files, f"checking {uri}")
            if not todo:
                log.info("%s already holds this checkpoint; not uploading again", uri)
                return uri
            log.warning("%s: repairing %d damaged object(s): %s", uri, len(todo), "; ".join(todo.values()))
        else:
            if stored is not None:
                log.warning("%s: replacing a checkpoint written under an older epoch", uri)
                self._delete_keys([base + MANIFEST_NAME], f"replacing {uri}")
            todo = self._problems(base, files, f"uploading to {uri}")
        tracker = TransferProgress(sum(e["size"] for e in files.values()) + len(manifest_data), progress)
        tracker.advance(sum(files[name]["size"] for name in files if name not in todo))
        claim = self._claim_key(run_id, step)
        for name in sorted(todo):
            self._check_claim(claim, sha, uri)
            self._upload_one(src / name, base + name, files[name], tracker, f"{src}: {name}")
        strays = [k for k in self._keys(base, f"uploading to {uri}")
                  if k[len(base):] not in files and k[len(base):] != MANIFEST_NAME]
        if strays:
            self._delete_keys(strays, f"uploading to {uri}")
        problems = self._problems(base, files, f"verifying {uri}")
        if problems:
            raise ArtifactError(f"{uri}: verification in the store failed: {'; '.join(problems.values())}")
        self._check_claim(claim, sha, uri)
        self._commit(base + MANIFEST_NAME, manifest_data, sha, uri, step)
        tracker.advance(len(manifest_data))
        log.info("uploaded %s to %s", src, uri)
        return uri

    def _check_committed(self, base: str, sha: str, epoch: Any, uri: str) -> bytes | None:
        """The committed manifest's bytes, or None; ArtifactError if it is another checkpoint
        that epoch ``epoch`` may not replace."""
        stored = self._get_bytes(base + MANIFEST_NAME, f"uploading to {uri}")
        if stored is None or hashlib.sha256(stored[0]).hexdigest() == sha:
            return None if stored is None else stored[0]
        theirs = _json_object(stored[0]).get("epoch")
        if not _newer(epoch, theirs):
            raise ArtifactError(f"{uri}: already committed with another manifest (sha256 "
                                f"{hashlib.sha256(stored[0]).hexdigest()[:12]}…, epoch {theirs}); "
                                "refusing to overwrite it")
        return stored[0]

    def _upload_one(self, path: Path, key: str, entry: Mapping[str, Any], tracker: TransferProgress,
                    label: str) -> None:
        """Upload one file and, meanwhile, hash it; refuse a file that differs from ``entry``.

        The transfer threads read the parts from the file themselves (as ``upload_file`` does)
        while one more thread hashes it: hashing the bytes on their way through a single
        reader instead made uploads 10–25 % slower here (docs/benchmarks.md, Store I/O)."""
        if not path.is_file():
            raise ArtifactError(f"{label}: missing")
        with ThreadPoolExecutor(1, thread_name_prefix="relay-hash") as hasher:
            digest = hasher.submit(sha256_file, path)
            try:
                self.client.upload_file(str(path), self.bucket, key, ExtraArgs={"Metadata": {SHA_KEY: entry["sha256"]}},
                                        Config=self.transfer_config, Callback=tracker.advance)
            except Exception as exc:
                raise self._error(exc, f"uploading {label}") from exc
            size, sha = digest.result()
        if size != entry["size"] or sha != entry["sha256"]:
            self._delete_keys([key], f"uploading {label}")
            problem = f"size {size} != {entry['size']}" if size != entry["size"] else "sha256 mismatch"
            raise ArtifactError(f"{label}: {problem}")

    def _commit(self, key: str, data: bytes, sha: str, uri: str, step: int) -> None:
        """Put the manifest if no manifest exists, then read it back."""
        self._put_if(key, data, f"committing {uri}", IfNoneMatch="*")
        stored = self._get_bytes(key, f"committing {uri}")
        if stored is None or hashlib.sha256(stored[0]).hexdigest() != sha:
            raise ArtifactError(f"{uri}: another writer committed step {step} first; this upload lost the race "
                                "and is not listed")

    # -- download -----------------------------------------------------------------------------

    def read_manifest(self, run_id: str, step: int) -> bytes:
        """The stored ``manifest.json`` bytes of a checkpoint (ArtifactError if absent)."""
        uri = self.uri_for(run_id, step)
        found = self._get_bytes(self._step_key(run_id, step) + MANIFEST_NAME, f"reading {uri}")
        if found is None:
            raise ArtifactError(f"{uri}: no such checkpoint in the store")
        return found[0]

    def get_checkpoint(self, run_id: str, step: int, dest_dir: str | os.PathLike[str],
                       progress: ProgressFn | None = None, *,
                       expected_manifest_sha256: str | None = None) -> Path:
        """Download the checkpoint into ``dest_dir``, verified (see the module doc). A corrupt
        object aborts the download naming the file; files verified so far are kept for the
        next attempt."""
        uri = self.uri_for(run_id, step)
        manifest_data = self.read_manifest(run_id, step)
        sha, files = stored_files(uri, manifest_data, expected_manifest_sha256)
        dest = Path(dest_dir)
        base = self._step_key(run_id, step)

        def fetch(name: str, part: Path, resume: bool, tracker: TransferProgress) -> None:
            self._download_one(base + name, part, resume, tracker, f"{uri}: {name}")

        staging = dest.parent / f".tmp-{step_dir_name(step)}-s3-{sha[:16]}"
        return assemble_checkpoint(uri, manifest_data, files, dest, staging, fetch, progress)

    def _download_one(self, key: str, part: Path, resume: bool, tracker: TransferProgress, label: str) -> None:
        """Fill ``part`` with the object at ``key``: parts in parallel into their offsets, or,
        when ``resume``, the rest after what ``part`` holds with one ranged GET. Interrupted,
        ``part`` is cut back to the bytes it holds from the start, so the next call resumes."""
        try:
            if resume:
                have = part.stat().st_size
                tracker.advance(have)
                response = self.client.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={have}-")
                with open(part, "ab") as out:
                    for chunk in response["Body"].iter_chunks(MB):
                        out.write(chunk)
                        tracker.advance(len(chunk))
                return  # assemble_checkpoint hashes and fsyncs it off this thread
            with open(part, "wb") as out:
                writer = OffsetWriter(out)
                try:
                    self.client.download_fileobj(self.bucket, key, writer, Config=self.transfer_config,
                                                 Callback=tracker.advance)
                except BaseException:
                    out.flush()
                    out.truncate(writer.prefix())
                    raise
        except Exception as exc:
            if self._is(exc, {"404", "NoSuchKey"}):
                raise ArtifactError(f"{label}: missing in the store") from exc
            raise self._error(exc, f"downloading {label}") from exc

    # -- the rest of the interface ------------------------------------------------------------

    def list_checkpoints(self, run_id: str) -> list[int]:
        """Steps of ``run_id`` whose manifest exists, ascending."""
        base = f"{self._run_key(run_id)}/checkpoints/"
        steps = set()
        for key in self._keys(base, f"listing {self.uri}/{run_id}"):
            match = _MANIFEST_KEY_RE.fullmatch(key[len(base):])
            if match:
                steps.add(int(match.group(1)))
        return sorted(steps)

    def list_runs(self) -> list[str]:
        """Run ids with anything stored under this store's prefix, sorted."""
        root = f"{self.prefix}/" if self.prefix else ""
        return sorted(p[len(root):].rstrip("/") for p in self._keys(root, f"listing {self.uri}", delimiter="/"))

    def verify_checkpoint(self, run_id: str, step: int) -> Verification:
        """HEAD every object of the stored copy: present, size and x-amz-meta-sha256 as in the
        manifest (a download re-hashes the bytes themselves)."""
        found = self._get_bytes(self._step_key(run_id, step) + MANIFEST_NAME, f"verifying {self.uri}")
        if found is None:
            return Verification(False, f"{step_dir_name(step)}: no such checkpoint in the store")
        try:
            manifest = parse_manifest(found[0])
        except CheckpointError as exc:
            return Verification(False, str(exc))
        problems = self._problems(self._step_key(run_id, step), manifest["files"], f"verifying {self.uri}")
        if problems:
            return Verification(False, problems[min(problems)], manifest["step"], manifest)
        return Verification(True, None, manifest["step"], manifest)

    def delete_checkpoint(self, run_id: str, step: int) -> None:
        """Delete the manifest first (the checkpoint stops being listed), then its objects and claim."""
        uri = self.uri_for(run_id, step)
        base = self._step_key(run_id, step)
        self._delete_keys([base + MANIFEST_NAME], f"deleting {uri}")
        rest = self._keys(base, f"deleting {uri}")
        self._delete_keys(rest + [self._claim_key(run_id, step)], f"deleting {uri}")

    def _file_key(self, run_id: str, name: str) -> str:
        if not name or name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"file name must be a plain relative path, got {name!r}")
        return f"{self._run_key(run_id)}/files/{name}"

    def put_file(self, local_path: str | os.PathLike[str], run_id: str, name: str,
                 progress: ProgressFn | None = None) -> str:
        """Upload one file to ``<run_id>/files/<name>`` (objects replace atomically), verified."""
        key = self._file_key(run_id, name)
        path = Path(local_path)
        uri = f"s3://{self.bucket}/{key}"
        try:
            size, sha = sha256_file(path)
        except FileNotFoundError as exc:
            raise ArtifactError(f"{path}: no such file") from exc
        entry = {"size": size, "sha256": sha}
        self._upload_one(path, key, entry, TransferProgress(size, progress), str(path))
        problem = self.object_problem(key, name, entry, f"verifying {uri}")
        if problem:
            raise ArtifactError(f"{uri}: verification in the store failed: {problem}")
        return uri

    def get_file(self, run_id: str, name: str, dest: str | os.PathLike[str],
                 progress: ProgressFn | None = None) -> Path:
        """Download ``<run_id>/files/<name>`` to ``dest`` (atomically), checked against its sha256."""
        key = self._file_key(run_id, name)
        uri = f"s3://{self.bucket}/{key}"
        head = self._head(key, f"downloading {uri}")
        if head is None:
            raise ArtifactMissing(f"{uri}: no such file in the store")
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        part = temp_sibling(target, target.name)
        with discard_on_error(part):
            self._download_one(key, part, False, TransferProgress(head["ContentLength"], progress), uri)
            size, digest = sha256_file(part, sync=True)
            expected = head.get("Metadata", {}).get(SHA_KEY)
            if size != head["ContentLength"] or (expected is not None and digest != expected):
                raise ArtifactError(f"{uri}: sha256 mismatch")
            os.replace(part, target)
        fsync_path(target.parent)
        return target


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        held = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return held if isinstance(held, dict) else {}


def _newer(ours: Any, theirs: Any) -> bool:
    """Whether epoch ``ours`` fences out epoch ``theirs`` (both must be integers)."""
    valid = all(isinstance(e, int) and not isinstance(e, bool) for e in (ours, theirs))
    return valid and ours > theirs


