"""One small interface over object storage: ``s3://bucket/prefix`` (boto3) and ``file:///path`` or a plain path.

Keys are ``/``-separated and relative to the base URL. Every write is atomic for readers: a key is either
absent or complete (local files: temp file + ``os.replace``; S3: a PUT or a completed multipart upload).

The S3 side lives in storage_s3.py. Credentials come from its :class:`S3Config` (usually
:meth:`S3Config.from_env`) and never appear in URLs, reprs, log lines or error messages.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlparse

if TYPE_CHECKING:
    from finetune_trainer.storage_s3 import S3Config

log = logging.getLogger(__name__)

T = TypeVar("T")

MiB = 1024 * 1024
TEMP_MARK = ".tmp-"
class StorageError(Exception):
    """A storage operation failed; the message names the URL, what went wrong and what to check.

    ``code`` is the server's error code when there is one (e.g. ``PreconditionFailed``).
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotFoundError(StorageError):
    """The key does not exist."""


@runtime_checkable
class Storage(Protocol):
    """Object storage rooted at ``url``; see the module docstring for the guarantees."""

    url: str

    def put_file(self, local: Path, key: str) -> None: ...
    def get_file(self, key: str, local: Path) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes: ...
    def put_if_absent(self, key: str, data: bytes) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, keys: Iterable[str]) -> None: ...


def check_key(url: str, key: str) -> str:
    """Reject keys that could escape the base or mean nothing: empty, absolute, ``..``, temp names."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or TEMP_MARK in key:
        raise StorageError(f"{url}: invalid key {key!r}: expected a relative path like 'dir/name' without '..'")
    return key


# --------------------------------------------------------------------------------------------------- local


class LocalStorage:
    """A directory on a local or mounted filesystem (``file:///path`` or a plain path)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = self.root.as_uri()
        if self.root.exists() and not self.root.is_dir():
            raise StorageError(f"{self.url}: exists but is not a directory; point the URL at a directory")

    def __repr__(self) -> str:
        return f"LocalStorage({self.url!r})"

    def _path(self, key: str) -> Path:
        return self.root / check_key(self.url, key)

    def _write_temp(self, final: Path, fill: Callable[[Any], None]) -> Path:
        """Write a fully synced temp file next to ``final`` (same filesystem, so rename is atomic)."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}{TEMP_MARK}{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                fill(f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _io(self, what: str, key: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except FileNotFoundError:
            raise NotFoundError(f"{what} {self.url}/{key}: no such key") from None
        except OSError as e:
            raise StorageError(f"{what} {self.url}/{key}: {e.strerror or e}; check the path and permissions") from e

    def put_file(self, local: Path, key: str) -> None:
        final = self._path(key)

        def run() -> None:
            with open(local, "rb") as src:
                tmp = self._write_temp(final, lambda dst: shutil.copyfileobj(src, dst, 8 * MiB))
            os.replace(tmp, final)

        self._io("put", key, run)

    def put_bytes(self, key: str, data: bytes) -> None:
        final = self._path(key)
        self._io("put", key, lambda: os.replace(self._write_temp(final, lambda f: f.write(data)), final))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        final = self._path(key)

        def run() -> bool:
            tmp = self._write_temp(final, lambda f: f.write(data))
            try:
                os.link(tmp, final)  # fails if the key exists; readers never see a partial file
                return True
            except FileExistsError:
                return False
            finally:
                tmp.unlink(missing_ok=True)

        return self._io("put_if_absent", key, run)

    def get_file(self, key: str, local: Path) -> None:
        src = self._path(key)

        def run() -> None:
            local.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f:
                tmp = self._write_temp(local, lambda dst: shutil.copyfileobj(f, dst, 8 * MiB))
            os.replace(tmp, local)

        self._io("get", key, run)

    def get_bytes(self, key: str) -> bytes:
        return self._io("get", key, self._path(key).read_bytes)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        # Walk only the directory the prefix points into.
        start = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not start.is_dir():
            return []
        keys = []
        for dirpath, _, files in os.walk(start):
            for name in files:
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix) and TEMP_MARK not in name:
                    keys.append(key)
        return sorted(keys)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self._path(key)
            self._io("delete", key, lambda p=path: p.unlink(missing_ok=True))
            # Drop directories the delete left empty, so a deleted checkpoint leaves no trace.
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


# ------------------------------------------------------------------------------------------------- factory


def open_storage(url: str, *, config: S3Config | None = None, check: bool = True) -> Storage:
    """Open ``s3://bucket/prefix``, ``file:///path`` or a plain path.

    Args:
        url: the base URL; keys are relative to it.
        config: S3 settings; default :meth:`S3Config.from_env`.
        check: for S3, make one request now so that wrong credentials, a missing bucket or an unreachable
            endpoint fail here with one clear error instead of at the first checkpoint.

    Raises:
        StorageError: unsupported scheme, credentials in the URL, or a failed check.
    """
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        if parsed.scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{url}: file URLs must be absolute (file:///path), got host {parsed.netloc!r}")
        return LocalStorage(Path(parsed.path if parsed.scheme == "file" else url))
    if parsed.scheme != "s3":
        raise StorageError(f"{parsed.scheme}://...: unsupported storage URL scheme; expected s3:// or file://")
    if "@" in parsed.netloc or parsed.password:
        raise StorageError(
            "s3://...: credentials in the storage URL are not supported; use AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY or FINETUNE_S3_SECRET_DIR"
        )
    if not parsed.netloc:
        raise StorageError(f"{url}: missing bucket name; expected s3://bucket/prefix")
    from finetune_trainer.storage_s3 import S3Config, S3Storage  # boto3 only where S3 is used

    storage = S3Storage(parsed.netloc, parsed.path, config or S3Config.from_env())
    if check:
        storage.check()
    return storage


__all__ = [
    "LocalStorage",
    "NotFoundError",
    "Storage",
    "StorageError",
    "open_storage",
]
