"""A fake of the Hugging Face Hub for tests: ``FakeHfApi`` implements the ``HfApi`` methods the
``HFStore`` calls, over an in-memory repository host (repos -> branches -> commits), raising the
library's own exceptions. Replace ``huggingface_hub.HfApi`` with it at its boundary (the Hub
cannot be reached from tests); instances made with one ``repos`` dict share one host.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import huggingface_hub
from huggingface_hub import errors as hub_errors
from huggingface_hub.hf_api import GitCommitInfo, RepoFile


def http_error(cls: type[Exception], status: int, message: str) -> Exception:
    """One of huggingface_hub's HTTP errors, as the library raises it."""
    try:
        import httpx2 as http
    except ImportError:  # older huggingface_hub: httpx
        import httpx as http
    request = http.Request("POST", "https://huggingface.co/api/models/x")
    return cls(message, response=http.Response(status, request=request))


class FakeHfApi:
    """In-memory Hub: repos -> branches -> commits (oid, {path: bytes}), and each commit's title
    and description by oid. Files over 1 KB are LFS."""

    instances: list[FakeHfApi] = []

    def __init__(self, token: str | None = None, repos: dict[str, Any] | None = None) -> None:
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {} if repos is None else repos
        self.calls: list[tuple[str, dict[str, Any]]] = []
        FakeHfApi.instances.append(self)

    def _record(self, name: str, **kwargs: Any) -> None:
        self.calls.append((name, kwargs))

    def _branch(self, repo_id: str, revision: str | None) -> list[tuple[str, dict[str, bytes]]]:
        if repo_id not in self.repos:
            raise http_error(hub_errors.RepositoryNotFoundError, 404, f"404 Repository Not Found for url: {repo_id}")
        for commits in self.repos[repo_id]["branches"].values():
            for index, (oid, _files) in enumerate(commits):
                if oid == revision:
                    return commits[: index + 1]
        branch = self.repos[repo_id]["branches"].get(revision or "main")
        if branch is None:
            raise http_error(hub_errors.RevisionNotFoundError, 404, f"404 Revision Not Found: {revision}")
        return branch

    def head(self, repo_id: str, branch: str = "main") -> tuple[str, dict[str, bytes]]:
        return self.repos[repo_id]["branches"][branch][-1]

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False,
                    repo_type: str | None = None) -> str:
        self._record("create_repo", repo_id=repo_id, private=private, exist_ok=exist_ok, repo_type=repo_type)
        if repo_id not in self.repos:
            self.repos[repo_id] = {"private": private, "branches": {"main": [("c0", {})]},
                                   "log": {"c0": ("initial commit", "")}}
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False, repo_type: str | None = None) -> None:
        self._record("create_branch", repo_id=repo_id, branch=branch)
        branches = self.repos[repo_id]["branches"]
        branches.setdefault(branch, list(branches["main"]))

    def list_repo_files(self, repo_id: str, *, revision: str | None = None, repo_type: str | None = None) -> list[str]:
        self._record("list_repo_files", repo_id=repo_id, revision=revision)
        return sorted(self._branch(repo_id, revision)[-1][1])

    def create_commit(self, repo_id: str, operations: list[Any], *, commit_message: str,
                      commit_description: str | None = None, revision: str | None = None,
                      parent_commit: str | None = None, repo_type: str | None = None) -> Any:
        self._record("create_commit", repo_id=repo_id, operations=operations, commit_message=commit_message,
                     revision=revision, parent_commit=parent_commit)
        commits = self._branch(repo_id, revision)
        if parent_commit is not None and commits[-1][0] != parent_commit:
            raise http_error(hub_errors.HfHubHTTPError, 412, "412 Client Error: Precondition Failed "
                             f"(parent commit {parent_commit} is not the head)")
        files = dict(commits[-1][1])
        for op in operations:
            if isinstance(op, huggingface_hub.CommitOperationDelete):
                doomed = [p for p in files if p == op.path_in_repo or p.startswith(op.path_in_repo.rstrip("/") + "/")]
                for path in doomed:
                    del files[path]
            else:
                source = op.path_or_fileobj
                files[op.path_in_repo] = source if isinstance(source, bytes) else Path(source).read_bytes()
        oid = hashlib.sha1(f"{len(commits)}{commit_message}{sorted(files)}".encode()).hexdigest()
        commits.append((oid, files))
        self.repos[repo_id]["log"][oid] = (commit_message, commit_description or "")
        return type("CommitInfo", (), {"oid": oid, "commit_url": f"https://hf.co/{repo_id}/commit/{oid}"})()

    def list_repo_commits(self, repo_id: str, *, repo_type: str | None = None, token: bool | str | None = None,
                          revision: str | None = None, formatted: bool = False) -> list[GitCommitInfo]:
        """The commits of ``revision``, newest first, as the library returns them."""
        self._record("list_repo_commits", repo_id=repo_id, revision=revision)
        commits = self._branch(repo_id, revision)
        start = datetime(2025, 1, 1, tzinfo=UTC)
        return [GitCommitInfo(commit_id=oid, authors=["relay"], created_at=start + timedelta(minutes=index),
                              title=self.repos[repo_id]["log"][oid][0], message=self.repos[repo_id]["log"][oid][1],
                              formatted_title=None, formatted_message=None)
                for index, (oid, _files) in reversed(list(enumerate(commits)))]

    def hf_hub_download(self, repo_id: str, filename: str, *, revision: str | None = None,
                        repo_type: str | None = None, local_dir: str | None = None) -> str:
        self._record("hf_hub_download", repo_id=repo_id, filename=filename, revision=revision)
        files = self._branch(repo_id, revision)[-1][1]
        if filename not in files:
            raise http_error(hub_errors.RemoteEntryNotFoundError, 404, f"404 Entry Not Found: {filename}")
        assert local_dir is not None
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[filename])
        return str(target)

    def get_paths_info(self, repo_id: str, paths: list[str], *, revision: str | None = None,
                       repo_type: str | None = None) -> list[RepoFile]:
        self._record("get_paths_info", repo_id=repo_id, paths=paths, revision=revision)
        files = self._branch(repo_id, revision)[-1][1]
        found = []
        for path in paths:
            if path in files:
                data = files[path]
                blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
                lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 130}
                found.append(RepoFile(path=path, size=len(data), oid=blob, lfs=lfs if len(data) > 1024 else None))
        return found

    def repo_info(self, repo_id: str, *, revision: str | None = None, repo_type: str | None = None) -> Any:
        return type("Info", (), {"sha": self._branch(repo_id, revision)[-1][0]})()
