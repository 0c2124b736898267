"""A PACS as the user configures it: its URL and credentials (never from the command line alone), and the UIDs a
user gives, checked; the errors every PACS step raises in one line.

Credentials: TUMORSEG_PACS_TOKEN (bearer), TUMORSEG_PACS_USER + TUMORSEG_PACS_PASSWORD (basic), or a file
(``auth_file``: a line "user:password" or "Bearer TOKEN"). HTTPS certificates are verified unless a CA bundle is
given; verification is never off.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

TIMEOUT_S = 30.0  # per read: a server that sends nothing for this long is given up


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class PacsError(ValueError):
    """The archive is unreachable, refuses us, answers garbage, or holds nothing usable: one line."""


class InvalidUID(ValueError):
    """A study or series UID that is not a DICOM UID: the user's input, never sent to the archive."""


def check_uid(uid: str, what: str = "UID") -> str:
    """A DICOM UID (digits and dots, at most 64 characters), or ``InvalidUID`` saying so."""
    if not isinstance(uid, str) or not 0 < len(uid) <= 64 or not _UID.match(uid):
        shown = uid if isinstance(uid, str) and len(uid) <= 80 else f"{str(uid)[:80]}..."
        raise InvalidUID(f"{what} {shown!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def redacted(url: str) -> str:
    """``url`` without any user:password part (for messages)."""
    u = urlsplit(url)
    if u.username is None and u.password is None:
        return url
    host = u.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    return u._replace(netloc=netloc + (f":{u.port}" if u.port else "")).geturl()


@dataclass(frozen=True)
class PacsConfig:
    url: str
    user: str | None = None
    password: str | None = None
    token: str | None = None
    ca_bundle: str | None = None  # a CA file for a private certificate; verification is never off
    timeout: float = TIMEOUT_S
    allow_redirects_to: tuple[str, ...] = ()  # other origins the server may redirect to (default: none)

    def __repr__(self) -> str:  # never a credential in a log line or a traceback
        return (
            f"PacsConfig(url={self.url!r}, user={'***' if self.user else None}, token={'***' if self.token else None})"
        )

    @classmethod
    def from_env(
        cls, url: str, auth_file: str | None = None, ca_bundle: str | None = None, allow_redirects_to=()
    ) -> PacsConfig:
        """Credentials from a file or the environment (never from the command line: a user:password in the
        URL is refused, and the message does not repeat it)."""
        u = urlsplit(url)
        if u.username is not None or u.password is not None:
            raise PacsError(
                f"{redacted(url)}: credentials in the URL are refused (they would show in the process list, logs "
                "and outputs); use TUMORSEG_PACS_USER and TUMORSEG_PACS_PASSWORD, or --pacs-auth-file"
            )
        user, password, token = None, None, os.environ.get("TUMORSEG_PACS_TOKEN") or None
        if os.environ.get("TUMORSEG_PACS_USER"):
            user, password = os.environ["TUMORSEG_PACS_USER"], os.environ.get("TUMORSEG_PACS_PASSWORD", "")
        if auth_file:
            try:
                line = Path(auth_file).read_text().splitlines()[0].strip()
            except (OSError, IndexError) as exc:
                raise PacsError(f"{auth_file}: cannot read credentials from it ({exc or 'empty file'})") from None
            if line.lower().startswith("bearer "):
                token, user, password = line[7:].strip(), None, None
            elif ":" in line:
                user, password = line.split(":", 1)
                token = None
            else:
                raise PacsError(f"{auth_file}: expected 'user:password' or 'Bearer TOKEN' on its first line")
        if not url.lower().startswith(("http://", "https://")):
            raise PacsError(f"{url}: a DICOMweb URL starts with http:// or https://")
        for o in allow_redirects_to:
            if not o.lower().startswith(("http://", "https://")):
                raise PacsError(f"{o}: an origin to allow redirects to starts with http:// or https://")
        return cls(url.rstrip("/"), user, password, token, ca_bundle, allow_redirects_to=tuple(allow_redirects_to))
