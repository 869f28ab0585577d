"""``HFStore``: checkpoints in a Hugging Face Hub repository, one commit per checkpoint.

URI: ``hf://user/repo[@branch]`` (branch ``main`` by default). The repository is created,
private, on the first upload. One repository (or branch) holds one run::

    relaytrain.json                            {"run_id": …}: the run this repo holds
    checkpoints/step_<N:08d>/<files>           model files, optimizer, trainer state, …
    checkpoints/step_<N:08d>/manifest.json     the checkpoint's manifest, in the same commit
    checkpoints/step_<N:08d>/trajectories/…    rollout trajectories, when given (not in the manifest)
    files/<name>                               ``put_file`` / ``get_file``

A commit is atomic, so a checkpoint appears whole or not at all.

Stale writers. A checkpoint commit's title is ``relaytrain: <run> step <N> (epoch <E>)``, ``E``
the manifest's epoch (the lease's fencing token). ``store.last_commit`` is the commit holding
the checkpoint the last ``put_checkpoint`` stored: the worker records it with the checkpoint,
and the next holder anchors its store there (``store.anchor(C)``, or ``parent_commit=C``).
``put_checkpoint`` reads the branch's commits from the head back to the anchor and refuses
(ArtifactError, nothing committed) if one of them is a checkpoint commit of this run by a newer
epoch than the manifest's (this writer is stale; a manifest without an epoch counts as older
than any), or if the anchor is not in the branch's history at all (history rewritten, or the
wrong branch). Commits by older epochs, deletions and ``put_file`` commits in between do not
block it. Without an anchor (the run's first checkpoint) the whole history is read. It then
commits with the head it read as ``parent_commit``, so a commit landing in between makes the
Hub refuse it atomically. After each checkpoint commit the anchor moves to it. ``put_file``
and ``delete_checkpoint`` commit on the current head without these checks, and move neither
the anchor nor ``last_commit``. A checkpoint the branch already holds intact is not committed
again, nor checked (nothing is written): ``last_commit`` is then the head holding it, and the
anchor stays.

The token comes from ``HF_TOKEN`` or the local Hugging Face login (``huggingface_hub.get_token``)
unless given. It is never logged, and is removed from every error message (errors are raised
``from None`` so the library's own text, which might hold it, is not chained).

``dry_run=True`` does everything but the network calls: it hashes the checkpoint, builds the
commit, and writes ``hf_upload_plan.json`` (files, sizes, sha256, repo, branch, commit message,
parent commit) into ``plan_dir``, or next to the checkpoint (its parent folder).

huggingface_hub is imported when needed: this module imports without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from relaytrain.artifacts._transfer import (
    TransferProgress,
    assemble_checkpoint,
    local_manifest,
    sha256_file,
    stored_files,
)
from relaytrain.artifacts.base import ArtifactStore, ProgressFn, check_run_id
from relaytrain.checkpoint import (
    MANIFEST_NAME,
    TEMP_PREFIX,
    Verification,
    atomic_write_text,
    fsync_path,
    parse_manifest,
    step_dir_name,
)
from relaytrain.errors import ArtifactError, ArtifactMissing, CheckpointError, StaleWriter

log = logging.getLogger(__name__)

PLAN_NAME = "hf_upload_plan.json"
"""The file a dry run writes."""
RUN_MARKER = "relaytrain.json"
"""The file at the repo's root naming the run it holds."""
_REPO_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
_MANIFEST_PATH_RE = re.compile(r"checkpoints/step_(\d{8,})/manifest\.json")
_CHECKPOINT_TITLE_RE = re.compile(r"relaytrain: (?P<run>\S+) step (?P<step>\d+) \(epoch (?P<epoch>\d+|None)\)")
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")
_GIT_BLOB_LIMIT = 10 << 20
_MISSING_ERRORS = frozenset({"EntryNotFoundError", "RemoteEntryNotFoundError"})


class _Missing(ArtifactMissing):
    """The file is not in the repository."""


def parse_hf_uri(uri: str) -> tuple[str, str]:
    """``hf://user/repo@branch`` -> ``("user/repo", "branch")`` (branch ``main`` if absent)."""
    if not uri.lower().startswith("hf://"):
        raise ArtifactError(f"{uri}: not a Hugging Face URI; expected hf://user/repo[@branch]")
    rest = uri[len("hf://"):]
    repo_id, _, branch = rest.partition("@")
    if not _REPO_RE.fullmatch(repo_id) or (_ and not branch):
        raise ArtifactError(f"{uri}: expected hf://user/repo[@branch]")
    return repo_id, branch or "main"


class HFStore(ArtifactStore):
    """An artifact store in the Hub repository ``repo_id`` on ``branch``.

    Args:
        repo_id: ``user/repo`` (a model repository; created private if missing).
        branch: the branch commits go to (created from ``main`` if missing).
        api: an ``HfApi``-like object; default ``huggingface_hub.HfApi(token=token)``.
        token: the Hub token; default ``HF_TOKEN`` or the local login.
        dry_run: plan uploads (``hf_upload_plan.json``) without any network call.
        plan_dir: where a dry run writes its plan; default the checkpoint's parent folder.
        parent_commit: the anchor, the commit recorded for the run's newest durable checkpoint
            (see the module doc); None: no anchor.
    """

    def __init__(self, repo_id: str, branch: str = "main", *, api: Any = None, token: str | None = None,
                 dry_run: bool = False, plan_dir: str | os.PathLike[str] | None = None,
                 parent_commit: str | None = None) -> None:
        if not _REPO_RE.fullmatch(repo_id or ""):
            raise ArtifactError(f"repo id must look like 'user/repo', got {repo_id!r}")
        if not branch:
            raise ArtifactError("branch must not be empty")
        self.repo_id = repo_id
        self.branch = branch
        self.dry_run = dry_run
        self.plan_dir = Path(plan_dir) if plan_dir is not None else None
        self.parent_commit = parent_commit
        """The anchor: the commit after which no newer epoch may have committed a checkpoint."""
        self.last_commit: str | None = None
        """The commit holding the checkpoint the last ``put_checkpoint`` stored."""
        self._token = token
        self._api = api
        self._run_id: str | None = None
        if not dry_run and token is None:
            from huggingface_hub import get_token

            self._token = get_token()

    @classmethod
    def from_uri(cls, uri: str, **options: Any) -> HFStore:
        """The store at ``hf://user/repo[@branch]``; ``options`` as for the constructor."""
        repo_id, branch = parse_hf_uri(uri)
        return cls(repo_id, branch, **options)

    def __repr__(self) -> str:
        return f"HFStore({self.uri!r}, dry_run={self.dry_run})"

    def anchor(self, revision: str | None) -> None:
        """Anchor the next checkpoint commit at ``revision`` (kept as is when None)."""
        if revision is not None:
            self.parent_commit = revision

    @property
    def uri(self) -> str:
        """``hf://user/repo`` (``@branch`` unless main)."""
        return f"hf://{self.repo_id}" + (f"@{self.branch}" if self.branch != "main" else "")

    @property
    def api(self) -> Any:
        """The Hub client (created on first use; never in a dry run)."""
        if self.dry_run:
            raise ArtifactError(f"{self.uri}: dry run: no network calls")
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(token=self._token)
        return self._api

    @staticmethod
    def _prefix(step: int) -> str:
        return f"checkpoints/{step_dir_name(step)}/"

    def uri_for(self, run_id: str, step: int) -> str:
        """``hf://user/repo[@branch]/checkpoints/step_<N>``."""
        check_run_id(run_id)
        return f"{self.uri}/{self._prefix(step).rstrip('/')}"

    # -- calls, with the token kept out of every message --------------------------------------

    def redact(self, text: str) -> str:
        """``text`` without the token (or anything that looks like a Hub token)."""
        if self._token:
            text = text.replace(self._token, "***")
        return _TOKEN_RE.sub("hf_***", text)

    def _describe(self, exc: Exception) -> str:
        names = {cls.__name__ for cls in type(exc).__mro__}
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if "RepositoryNotFoundError" in names:
            return (f"repository {self.repo_id} not found, or not accessible with this token "
                    "(set HF_TOKEN or run `hf auth login`)")
        if "RevisionNotFoundError" in names:
            return f"branch {self.branch!r} (or the requested commit) not found in {self.repo_id}"
        if names & _MISSING_ERRORS:
            return "no such file in the repository"
        if status in (401, 403):
            return f"not authorized for {self.repo_id} (HTTP {status}); check HF_TOKEN"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return f"{type(exc).__name__}: {first_line}"

    def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return getattr(self.api, method)(*args, **kwargs)
        except ArtifactError:
            raise
        except Exception as exc:
            kind = _Missing if {c.__name__ for c in type(exc).__mro__} & _MISSING_ERRORS else ArtifactError
            raise kind(self.redact(f"{what}: {self._describe(exc)}")) from None

    def _files(self, revision: str | None = None) -> list[str]:
        return list(self._call(f"listing {self.uri}", "list_repo_files", self.repo_id,
                               revision=revision or self.branch, repo_type="model"))

    def _download(self, path_in_repo: str, folder: Path, revision: str | None = None) -> Path:
        return Path(self._call(f"downloading {self.uri}/{path_in_repo}", "hf_hub_download", self.repo_id,
                               path_in_repo, revision=revision or self.branch, repo_type="model",
                               local_dir=str(folder)))

    @contextmanager
    def _downloaded(self, path_in_repo: str, revision: str | None = None, *,
                    beside: Path | None = None) -> Iterator[Path]:
        """Download one file into a scratch folder and yield its path; the folder is removed
        after. ``beside``: put the folder next to that path (a ``.tmp-`` name), so the file
        can be renamed there."""
        prefix, where = ("relay-hf-", None) if beside is None else (f"{TEMP_PREFIX}{beside.name}-hf-", beside.parent)
        with tempfile.TemporaryDirectory(prefix=prefix, dir=where, ignore_cleanup_errors=True) as folder:
            yield self._download(path_in_repo, Path(folder), revision)

    def _bound_run(self, files: list[str], revision: str | None = None) -> str | None:
        """The run id in the repo's ``relaytrain.json``, or None if the repo has none."""
        if self._run_id is None and RUN_MARKER in files:
            try:
                with self._downloaded(RUN_MARKER, revision) as path:
                    marker = json.loads(path.read_bytes())
            except (ValueError, OSError) as exc:
                raise ArtifactError(f"{self.uri}: {RUN_MARKER} is unreadable: {exc}") from None
            self._run_id = str(marker.get("run_id")) if isinstance(marker, dict) else None
        return self._run_id

    def _check_run(self, run_id: str, files: list[str], revision: str | None = None) -> bool:
        """Whether ``run_id`` is the repo's run (True) or the repo holds none yet (False)."""
        bound = self._bound_run(files, revision)
        if bound is not None and bound != check_run_id(run_id):
            raise ArtifactError(f"{self.uri} holds run {bound!r}, not {run_id!r}: use one repository "
                                "(or branch) per run")
        return bound is not None

    # -- upload -------------------------------------------------------------------------------

    def put_checkpoint(self, local_dir: str | os.PathLike[str], run_id: str, step: int,
                       progress: ProgressFn | None = None, *, parent_commit: str | None = None,
                       trajectories_dir: str | os.PathLike[str] | None = None) -> str:
        """Upload the checkpoint at ``local_dir`` as one commit on the branch and verify it.

        ``parent_commit``: the anchor (default ``self.parent_commit``); the commit is refused
        with ArtifactError if a newer epoch committed a checkpoint of this run since, or if the
        anchor is not in the branch's history (see the module doc). ``trajectories_dir``: a
        folder of rollout trajectories to add under ``checkpoints/step_<N>/trajectories/`` in
        the same commit. Afterwards ``self.last_commit`` and ``self.parent_commit`` are the
        new commit. A checkpoint the branch already holds with the same manifest, intact, is
        not committed again (nor fenced); ``self.last_commit`` is then the head holding it.
        """
        src = Path(local_dir)
        check_run_id(run_id)
        manifest_data, manifest = local_manifest(src, step)
        sha = hashlib.sha256(manifest_data).hexdigest()
        prefix = self._prefix(step)
        uploads = _hash_sources(src, manifest, prefix)
        if trajectories_dir is not None:
            uploads += _hash_folder(Path(trajectories_dir), f"{prefix}trajectories/")
        uploads.append({"path_in_repo": prefix + MANIFEST_NAME, "local_path": str(src / MANIFEST_NAME),
                        "size": len(manifest_data), "sha256": sha})
        anchor = parent_commit if parent_commit is not None else self.parent_commit
        epoch = manifest.get("epoch")
        message = f"relaytrain: {run_id} step {step} (epoch {epoch})"
        uri = self.uri_for(run_id, step)
        total = sum(item["size"] for item in uploads)
        if self.dry_run:
            self._write_plan(src, run_id, step, sha, message, anchor, uploads)
            TransferProgress(total, progress).advance(total)
            return uri
        tracker = TransferProgress(total, progress)
        self._call(f"creating {self.repo_id}", "create_repo", self.repo_id, private=True, exist_ok=True,
                   repo_type="model")
        if self.branch != "main":
            self._call(f"creating branch {self.branch}", "create_branch", self.repo_id, branch=self.branch,
                       exist_ok=True, repo_type="model")
        commits = self._commits()
        head = commits[0].commit_id
        files = self._files(head)
        bound = self._check_run(run_id, files, head)
        if prefix + MANIFEST_NAME in files and self._same_manifest(run_id, step, sha, head):
            if not self._check_paths({item["path_in_repo"]: item for item in uploads}, head):
                log.info("%s already holds this checkpoint (commit %s); not committing again", uri, head)
                self.last_commit = head  # the anchor stays: nothing was checked
                return uri
            log.warning("%s holds this checkpoint damaged; committing it again", uri)
        self._fence(commits, run_id, epoch, anchor, uri)
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        wanted = {item["path_in_repo"] for item in uploads}
        operations: list[Any] = [CommitOperationDelete(path_in_repo=path) for path in files
                                 if path.startswith(prefix) and path not in wanted]
        if not bound:
            operations.append(CommitOperationAdd(path_in_repo=RUN_MARKER,
                                                 path_or_fileobj=json.dumps({"run_id": run_id}).encode()))
        operations += [CommitOperationAdd(path_in_repo=item["path_in_repo"], path_or_fileobj=item["local_path"])
                       for item in uploads]
        oid = self._commit(operations, message, {"run_id": run_id, "step": step, "manifest_sha256": sha,
                                                 "epoch": epoch}, head, uri)
        self._run_id = run_id
        problems = self._check_paths({item["path_in_repo"]: item for item in uploads}, oid)
        if problems:
            raise ArtifactError(f"{uri}: verification of commit {oid} failed: {'; '.join(problems)}")
        self.last_commit = self.parent_commit = oid
        tracker.advance(total)
        log.info("uploaded %s to %s (commit %s)", src, uri, oid)
        return uri

    def _commits(self) -> list[Any]:
        """The branch's commits, newest first (``GitCommitInfo``: ``commit_id``, ``title``, …)."""
        commits = list(self._call(f"listing the commits of {self.uri}", "list_repo_commits", self.repo_id,
                                  revision=self.branch, repo_type="model"))
        if not commits:
            raise ArtifactError(f"{self.uri}: branch {self.branch!r} has no commits")
        return commits

    def _fence(self, commits: list[Any], run_id: str, epoch: Any, anchor: str | None, uri: str) -> None:
        """Refuse (ArtifactError) if a commit after ``anchor`` holds a checkpoint of ``run_id`` by
        an epoch newer than ``epoch``, or if ``anchor`` is not in the history (module doc)."""
        for commit in commits:
            if anchor is not None and commit.commit_id == anchor:
                return
            theirs = _checkpoint_epoch(commit.title, run_id)
            if theirs is not None and (not isinstance(epoch, int) or theirs > epoch):
                since = f"after commit {anchor}" if anchor is not None else "already"
                ours = f"epoch {epoch}" if isinstance(epoch, int) else "no epoch"
                raise StaleWriter(
                    f"{uri}: commit refused: branch {self.branch!r} of {self.repo_id} {since} holds commit "
                    f"{commit.commit_id} ({commit.title!r}) by epoch {theirs}, newer than this checkpoint's "
                    f"({ours}): this writer is stale")
        if anchor is not None:
            raise ArtifactError(
                f"{uri}: commit refused: the recorded commit {anchor} is not in the history of branch "
                f"{self.branch!r} of {self.repo_id} (history rewritten, or the wrong branch)")

    def _commit(self, operations: list[Any], message: str, description: Mapping[str, Any],
                parent: str | None, uri: str) -> str:
        """Create the commit (only on ``parent`` when given) and return its id."""
        try:
            info = self.api.create_commit(self.repo_id, operations, commit_message=message,
                                          commit_description=json.dumps(dict(description)), revision=self.branch,
                                          parent_commit=parent, repo_type="model")
        except Exception as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if parent is not None and status in (409, 412):
                raise ArtifactError(self.redact(
                    f"{uri}: commit refused: branch {self.branch!r} of {self.repo_id} has moved past parent "
                    f"commit {parent} (another writer committed in between)")) from None
            raise ArtifactError(self.redact(f"committing {uri}: {self._describe(exc)}")) from None
        oid = str(getattr(info, "oid", "") or "")
        if not oid:
            raise ArtifactError(f"committing {uri}: the Hub returned no commit id")
        return oid

    def _same_manifest(self, run_id: str, step: int, sha: str, revision: str) -> bool:
        return hashlib.sha256(self.read_manifest(run_id, step, revision)).hexdigest() == sha

    def _check_paths(self, expected: Mapping[str, Mapping[str, Any]], revision: str | None) -> list[str]:
        """Problems of the files at ``revision`` against ``expected`` (size, and the LFS sha256
        or the git blob id; a small file with neither known is downloaded and hashed)."""
        infos = self._call(f"verifying {self.uri}", "get_paths_info", self.repo_id, sorted(expected),
                           revision=revision or self.branch, repo_type="model")
        found = {info.path: info for info in infos if hasattr(info, "size")}
        problems = []
        for path in sorted(expected):
            entry, info = expected[path], found.get(path)
            name = path.split("/", 2)[2] if path.startswith("checkpoints/") else path
            if info is None:
                problems.append(f"{name}: missing")
            elif info.size != entry["size"]:
                problems.append(f"{name}: size {info.size} != {entry['size']}")
            elif getattr(info, "lfs", None) is not None:
                if info.lfs.sha256 != entry["sha256"]:
                    problems.append(f"{name}: sha256 mismatch")
            elif entry.get("git_sha1") is not None:
                if info.blob_id != entry["git_sha1"]:
                    problems.append(f"{name}: sha256 mismatch (git blob {info.blob_id})")
            else:
                with self._downloaded(path, revision) as local:
                    if sha256_file(local)[1] != entry["sha256"]:
                        problems.append(f"{name}: sha256 mismatch")
        return problems

    def _write_plan(self, src: Path, run_id: str, step: int, sha: str, message: str, parent: str | None,
                    uploads: list[dict[str, Any]]) -> Path:
        folder = self.plan_dir or src.resolve().parent
        plan = {"repo_id": self.repo_id, "repo_type": "model", "private": True, "branch": self.branch,
                "run_id": run_id, "step": step, "commit_message": message, "parent_commit": parent,
                "manifest_sha256": sha, "total_bytes": sum(item["size"] for item in uploads),
                "files": [{key: item[key] for key in ("path_in_repo", "local_path", "size", "sha256")}
                          for item in uploads],
                "run_marker": {"path_in_repo": RUN_MARKER, "content": {"run_id": run_id},
                               "added": "if the repository does not have one yet"},
                "created_at": datetime.now(UTC).isoformat(timespec="seconds")}
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / PLAN_NAME
        atomic_write_text(path, json.dumps(plan, indent=2) + "\n")
        log.info("dry run: wrote the upload plan for %s to %s", self.uri_for(run_id, step), path)
        return path

    # -- download and the rest of the interface -----------------------------------------------

    def read_manifest(self, run_id: str, step: int, revision: str | None = None) -> bytes:
        """The stored ``manifest.json`` bytes of a checkpoint (ArtifactError if absent)."""
        check_run_id(run_id)
        try:
            with self._downloaded(self._prefix(step) + MANIFEST_NAME, revision) as path:
                return path.read_bytes()
        except _Missing:
            raise _Missing(f"{self.uri_for(run_id, step)}: no such checkpoint in the store") from None

    def get_checkpoint(self, run_id: str, step: int, dest_dir: str | os.PathLike[str],
                       progress: ProgressFn | None = None, *, expected_manifest_sha256: str | None = None,
                       revision: str | None = None) -> Path:
        """Download the checkpoint (at ``revision``, default the branch) into ``dest_dir``:
        files already there with the right size and sha256 are kept, every other file is
        downloaded and re-hashed, and the folder is renamed into place when complete."""
        uri = self.uri_for(run_id, step)
        manifest_data = self.read_manifest(run_id, step, revision)
        sha, files = stored_files(uri, manifest_data, expected_manifest_sha256)
        dest = Path(dest_dir)
        downloads = dest.parent / f".tmp-{step_dir_name(step)}-hf-download"

        def fetch(name: str, part: Path, resume: bool, tracker: TransferProgress) -> None:
            os.replace(self._download(self._prefix(step) + name, downloads, revision), part)
            tracker.advance(part.stat().st_size)

        staging = dest.parent / f".tmp-{step_dir_name(step)}-hf-{sha[:16]}"
        assemble_checkpoint(uri, manifest_data, files, dest, staging, fetch, progress)
        shutil.rmtree(downloads, ignore_errors=True)
        return dest

    def list_checkpoints(self, run_id: str) -> list[int]:
        """Steps whose manifest is on the branch (none if the repo holds another run)."""
        check_run_id(run_id)
        files = self._files()
        if self._bound_run(files) not in (None, run_id):
            return []
        return sorted(int(m.group(1)) for path in files if (m := _MANIFEST_PATH_RE.fullmatch(path)))

    def list_runs(self) -> list[str]:
        """The run this repository holds (``relaytrain.json``), or none."""
        bound = self._bound_run(self._files())
        return [bound] if bound else []

    def head_commit(self) -> str:
        """The commit at the head of the branch now."""
        return str(self._call(f"reading {self.uri}", "repo_info", self.repo_id, revision=self.branch,
                              repo_type="model").sha)

    def verify_checkpoint(self, run_id: str, step: int) -> Verification:
        """Check the stored copy without downloading large files: manifest, sizes, and the
        LFS sha256 (small files are downloaded and hashed)."""
        try:
            manifest = parse_manifest(self.read_manifest(run_id, step))
        except CheckpointError as exc:
            return Verification(False, str(exc))
        except _Missing:
            return Verification(False, f"{step_dir_name(step)}: no such checkpoint in the store")
        expected = {self._prefix(step) + name: entry for name, entry in manifest["files"].items()}
        problems = self._check_paths(expected, None)
        return Verification(not problems, problems[0] if problems else None, manifest["step"], manifest)

    def delete_checkpoint(self, run_id: str, step: int, *, parent_commit: str | None = None) -> None:
        """Delete the checkpoint's folder in one commit on the current head (no-op if absent;
        with ``parent_commit``, only if the head is that commit). No epoch check; the anchor
        and ``last_commit`` stay as they are."""
        prefix = self._prefix(step)
        check_run_id(run_id)
        if not any(path.startswith(prefix) for path in self._files()):
            return
        from huggingface_hub import CommitOperationDelete

        self._commit([CommitOperationDelete(path_in_repo=prefix, is_folder=True)],
                     f"relaytrain: {run_id} delete step {step}", {"run_id": run_id, "deleted_step": step},
                     parent_commit, self.uri_for(run_id, step))

    def _file_path(self, run_id: str, name: str) -> str:
        check_run_id(run_id)
        if not name or name.startswith("/") or any(part in ("", ".", "..") for part in name.split("/")):
            raise ValueError(f"file name must be a plain relative path, got {name!r}")
        return f"files/{name}"

    def put_file(self, local_path: str | os.PathLike[str], run_id: str, name: str,
                 progress: ProgressFn | None = None) -> str:
        """Commit one file as ``files/<name>`` on the current head (no epoch check; the anchor
        and ``last_commit`` stay as they are)."""
        uri = self.put_files([(local_path, name)], run_id)[0]
        size = Path(local_path).stat().st_size
        TransferProgress(size, progress).advance(size)
        return uri

    def put_files(self, files: list[tuple[str | os.PathLike[str], str]], run_id: str) -> list[str]:
        """Commit several files as ``files/<name>`` in one commit on the current head."""
        adds = [(Path(path), self._file_path(run_id, name), name) for path, name in files]
        for path, _, _ in adds:
            if not path.is_file():
                raise ArtifactError(f"{path}: no such file")
        uris = [f"{self.uri}/{in_repo}" for _, in_repo, _ in adds]
        if self.dry_run or not adds:
            return uris
        from huggingface_hub import CommitOperationAdd

        self._call(f"creating {self.repo_id}", "create_repo", self.repo_id, private=True, exist_ok=True,
                   repo_type="model")
        what, about = (adds[0][2], {"file": adds[0][2]}) if len(adds) == 1 else (f"{len(adds)} files",
                                                                                  {"files": len(adds)})
        self._commit([CommitOperationAdd(path_in_repo=in_repo, path_or_fileobj=str(path)) for path, in_repo, _ in adds],
                     f"relaytrain: {run_id} {what}", {"run_id": run_id, **about}, None, uris[0])
        return uris

    def get_file(self, run_id: str, name: str, dest: str | os.PathLike[str],
                 progress: ProgressFn | None = None) -> Path:
        """Download ``files/<name>`` to ``dest`` atomically."""
        path_in_repo = self._file_path(run_id, name)
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._downloaded(path_in_repo, beside=target) as fetched:
                size = fetched.stat().st_size
                fsync_path(fetched)
                os.replace(fetched, target)
        except _Missing:
            raise _Missing(f"{self.uri}/{path_in_repo}: no such file in the store") from None
        fsync_path(target.parent)
        TransferProgress(size, progress).advance(size)
        return target


def _checkpoint_epoch(title: str, run_id: str) -> int | None:
    """The epoch of a checkpoint commit of ``run_id`` (its title), or None for any other commit
    (another run's, a deletion, a file, or a checkpoint written without an epoch)."""
    match = _CHECKPOINT_TITLE_RE.fullmatch((title or "").strip())
    if match is None or match["run"] != run_id or match["epoch"] == "None":
        return None
    return int(match["epoch"])


def _hash(path: Path) -> tuple[int, str, str | None]:
    """``(size, sha256, git blob sha1 or None for large files)`` in one pass."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    git = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False) if size <= _GIT_BLOB_LIMIT else None
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            sha256.update(chunk)
            if git is not None:
                git.update(chunk)
    return size, sha256.hexdigest(), git.hexdigest() if git is not None else None


def _hash_sources(src: Path, manifest: Mapping[str, Any], prefix: str) -> list[dict[str, Any]]:
    """Every file of the manifest, hashed and checked against it (the local copy is verified)."""
    uploads = []
    for name in sorted(manifest["files"]):
        entry, path = manifest["files"][name], src / name
        if not path.is_file():
            raise ArtifactError(f"{src}: {name}: missing")
        size, sha, git = _hash(path)
        if size != entry["size"]:
            raise ArtifactError(f"{src}: {name}: size {size} != {entry['size']}")
        if sha != entry["sha256"]:
            raise ArtifactError(f"{src}: {name}: sha256 mismatch")
        uploads.append({"path_in_repo": prefix + name, "local_path": str(path), "size": size, "sha256": sha,
                        "git_sha1": git})
    return uploads


def _hash_folder(folder: Path, prefix: str) -> list[dict[str, Any]]:
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: trajectories folder not found")
    uploads = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size, sha, git = _hash(path)
        uploads.append({"path_in_repo": prefix + path.relative_to(folder).as_posix(), "local_path": str(path),
                        "size": size, "sha256": sha, "git_sha1": git})
    return uploads
