"""Secrets in what a run file says: never shown on a page (``relay report``, the dashboard) nor to
a viewer token (``GET /api/v1/runs/{id}``). One rule, wherever a value sits in the tree:

- the value of a key whose name contains KEY, TOKEN, SECRET, PASSWORD, SIGNATURE or CREDENTIAL
  (any case): an env variable ``HF_TOKEN``, a field ``api_key``, a list under ``keys``; a number,
  a boolean or null there is kept (``max_new_tokens: 8`` hides nothing);
- the credentials inside a URL in any string: ``https://user:pass@host`` keeps the user (a lone
  ``https://ghp_…@host`` loses it), and a query parameter so named (``?token=…``,
  ``X-Amz-Signature=…``) loses its value.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

SECRET_NAME_PARTS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "SIGNATURE", "CREDENTIAL")
"""A key containing any of these (in any case) holds a secret."""
REDACTED = "[redacted]"
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(part in upper for part in SECRET_NAME_PARTS)


def redact_secrets(data: Any) -> Any:
    """A copy of ``data`` (dicts, lists, scalars) with every secret replaced by :data:`REDACTED`."""
    if isinstance(data, dict):
        return {k: REDACTED if is_secret_name(str(k)) and not _says_nothing(v) else redact_secrets(v)
                for k, v in data.items()}
    if isinstance(data, list):
        return [redact_secrets(v) for v in data]
    if isinstance(data, str):
        return _URL.sub(lambda match: _redact_url(match.group(0)), data)
    return data


def _says_nothing(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float)


def _redact_url(url: str) -> str:
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{REDACTED}@{host}" if has_password else f"{REDACTED}@{host}"
    query = parts.query
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(is_secret_name(k) for k, _ in pairs):
        query = urlencode([(k, REDACTED if is_secret_name(k) else v) for k, v in pairs], safe="[]")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
