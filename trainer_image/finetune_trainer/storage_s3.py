"""The S3 side of finetune_trainer.storage: ``s3://bucket/prefix`` through boto3, with its configuration from the
environment or a mounted Secret, retries with a deadline for a server that is down or busy, and errors that say
what to check (credentials, bucket, endpoint) without ever showing a secret."""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from finetune_trainer import contract
from finetune_trainer.storage import TEMP_MARK, MiB, NotFoundError, StorageError, check_key

log = logging.getLogger(__name__)

T = TypeVar("T")

ADDRESSING_STYLES = ("auto", "path", "virtual")
AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "403",
}
NO_BUCKET_CODES = {"NoSuchBucket"}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}



@dataclass(frozen=True)
class S3Config:
    """How to reach S3: endpoint, credentials, addressing, multipart tuning and retry budget.

    ``access_key``/``secret_key``/``session_token`` left as None fall back to boto3's default chain (profile,
    web identity, instance metadata). They are excluded from the repr.
    """

    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    addressing_style: str = "auto"
    multipart_threshold: int = 32 * MiB
    multipart_chunksize: int = 16 * MiB
    max_concurrency: int = 8
    retry_mode: str = "standard"
    max_attempts: int = 4
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    retry_deadline_s: float = 120.0
    page_size: int = 1000

    def __post_init__(self) -> None:
        if self.addressing_style not in ADDRESSING_STYLES:
            raise StorageError(
                f"S3 addressing style {self.addressing_style!r} (FINETUNE_S3_ADDRESSING_STYLE): "
                f"expected one of {', '.join(ADDRESSING_STYLES)}"
            )
        if self.multipart_chunksize < 5 * MiB:
            raise StorageError(f"S3 multipart chunk size {self.multipart_chunksize} bytes: S3 needs at least 5 MiB")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> S3Config:
        """Read the standard AWS variables plus ours; a mounted Secret directory wins over variables.

        - ``FINETUNE_S3_SECRET_DIR``: directory with files ``accessKey``, ``secretKey`` (and optional
          ``sessionToken``), as a Kubernetes Secret volume provides.
        - ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``
          (or ``AWS_DEFAULT_REGION``).
        - ``FINETUNE_S3_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL``; ``FINETUNE_S3_ADDRESSING_STYLE``
          (auto|path|virtual; default path when an endpoint is set, as S3-compatible servers expect).
        - ``FINETUNE_S3_MULTIPART_THRESHOLD_MB``, ``FINETUNE_S3_MULTIPART_CHUNKSIZE_MB``,
          ``FINETUNE_S3_MAX_CONCURRENCY``, ``FINETUNE_S3_RETRY_DEADLINE_S``.
        """
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {
            "access_key": env.get(contract.ENV_S3_ACCESS_KEY) or None,
            "secret_key": env.get(contract.ENV_S3_SECRET_KEY) or None,
            "session_token": env.get("AWS_SESSION_TOKEN") or None,
            "region": env.get(contract.ENV_S3_REGION) or env.get("AWS_DEFAULT_REGION") or None,
            "endpoint_url": env.get("FINETUNE_S3_ENDPOINT_URL") or env.get(contract.ENV_S3_ENDPOINT) or None,
        }
        if secret_dir := env.get("FINETUNE_S3_SECRET_DIR"):
            values.update(read_secret_dir(Path(secret_dir)))
        values["addressing_style"] = env.get(contract.ENV_S3_ADDRESSING_STYLE) or (
            "path" if values["endpoint_url"] else "auto"
        )
        numbers = {
            "FINETUNE_S3_MULTIPART_THRESHOLD_MB": ("multipart_threshold", MiB),
            "FINETUNE_S3_MULTIPART_CHUNKSIZE_MB": ("multipart_chunksize", MiB),
            "FINETUNE_S3_MAX_CONCURRENCY": ("max_concurrency", 1),
            "FINETUNE_S3_RETRY_DEADLINE_S": ("retry_deadline_s", 1),
        }
        for var, (name, unit) in numbers.items():
            if raw := env.get(var):
                try:
                    number = float(raw)
                except ValueError:
                    raise StorageError(f"{var}={raw!r}: expected a number") from None
                values[name] = number if name == "retry_deadline_s" else int(number * unit)
        values.update(overrides)
        return cls(**values)

    def secrets(self) -> list[str]:
        return [s for s in (self.secret_key, self.session_token, self.access_key) if s]


def read_secret_dir(path: Path) -> dict[str, str]:
    """Credentials from a mounted Secret: ``accessKey`` and ``secretKey`` files, ``sessionToken`` optional."""
    out = {}
    for name, attr, required in (
        (contract.SECRET_ACCESS_KEY, "access_key", True),
        (contract.SECRET_SECRET_KEY, "secret_key", True),
        ("sessionToken", "session_token", False),
    ):
        file = path / name
        if file.is_file():
            out[attr] = file.read_text().strip()
        elif required:
            raise StorageError(
                f"FINETUNE_S3_SECRET_DIR={path}: missing file {name!r}; "
                "expected a Secret volume with keys accessKey and secretKey"
            )
    return out


def _is_transient(exc: BaseException) -> bool:
    """Connection failures, throttling and 5xx: what a server that is down, restarting or busy returns."""
    from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return status >= 500 or exc.response.get("Error", {}).get("Code") in THROTTLE_CODES
    return isinstance(exc, (BotoConnectionError, HTTPClientError, ReadTimeoutError, ConnectionError))


class S3Storage:
    """A bucket and prefix on S3 or an S3-compatible server (SeaweedFS, Ceph RGW, MinIO)."""

    def __init__(self, bucket: str, prefix: str, config: S3Config) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix, self.config = bucket, prefix.strip("/"), config
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.retries = 0  # connection-level retries done by our own loop, for tests and metrics
        session = boto3.session.Session(
            aws_access_key_id=config.access_key,
            aws_secret_access_key=config.secret_key,
            aws_session_token=config.session_token,
            region_name=config.region or "us-east-1",
        )
        self.client = session.client(
            "s3",
            endpoint_url=config.endpoint_url,
            config=Config(
                retries={"mode": config.retry_mode, "max_attempts": config.max_attempts},
                s3={"addressing_style": config.addressing_style},
                connect_timeout=config.connect_timeout,
                read_timeout=config.read_timeout,
                max_pool_connections=max(10, config.max_concurrency + 2),
            ),
        )
        self.transfer_config = TransferConfig(
            multipart_threshold=config.multipart_threshold,
            multipart_chunksize=config.multipart_chunksize,
            max_concurrency=config.max_concurrency,
        )

    def __repr__(self) -> str:
        return f"S3Storage({self.url!r}, endpoint={self.config.endpoint_url!r})"

    # -- plumbing

    def _key(self, key: str) -> str:
        check_key(self.url, key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _redact(self, text: str) -> str:
        for secret in self.config.secrets():
            text = text.replace(secret, "***")
        return text

    def _where(self) -> str:
        return f"endpoint {self.config.endpoint_url}" if self.config.endpoint_url else "AWS S3"

    def _error(self, what: str, key: str | None, exc: Exception) -> StorageError:
        """Turn a botocore error into one message a user can act on."""
        from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

        target = f"{self.url}/{key}" if key else self.url
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return StorageError(
                f"{what} {target}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "or mount a Secret with accessKey/secretKey and set FINETUNE_S3_SECRET_DIR"
            )
        if not isinstance(exc, ClientError):
            return StorageError(self._redact(f"{what} {target} at {self._where()}: {type(exc).__name__}: {exc}"))
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        detail = self._redact(f"{code or status}: {err.get('Message') or 'no message'}")
        if code in AUTH_CODES:
            return StorageError(
                f"{what} {target}: access denied by {self._where()} ({detail}); check the access key and "
                "secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or FINETUNE_S3_SECRET_DIR) and that they "
                f"may read and write bucket {self.bucket!r}"
            )
        if code in NO_BUCKET_CODES:
            return StorageError(
                f"{what} {target}: bucket {self.bucket!r} does not exist at {self._where()}; "
                "create it or fix the bucket name in the URL"
            )
        if code in NOT_FOUND_CODES:
            return NotFoundError(f"{what} {target}: no such key", code)
        return StorageError(f"{what} {target} at {self._where()}: {detail}", code or str(status))

    def _call(self, what: str, key: str | None, fn: Callable[[], T]) -> T:
        """Run ``fn``; retry transient errors with exponential backoff and full jitter until the deadline.

        botocore already retries throttling, 5xx and short connection blips (``retry_mode``); this loop
        rides out longer outages (a restarting S3 server) within ``retry_deadline_s``. Auth and missing
        bucket errors fail at once.
        """
        start, attempt = time.monotonic(), 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if not _is_transient(exc):
                    raise self._error(what, key, exc) from None
                attempt += 1
                elapsed = time.monotonic() - start
                delay = random.uniform(0, min(8.0, 0.5 * 2**attempt))
                if elapsed + delay > self.config.retry_deadline_s:
                    target = f"{self.url}/{key}" if key else self.url
                    raise StorageError(
                        f"{what} {target}: cannot reach {self._where()} after {attempt} attempts in "
                        f"{elapsed:.1f}s ({self._redact(str(exc))}); check the endpoint URL "
                        "(FINETUNE_S3_ENDPOINT_URL/AWS_ENDPOINT_URL), that the server is up and the network path"
                    ) from None
                self.retries += 1
                log.warning(
                    "%s %s: S3 unavailable (%s), retry %d in %.1fs",
                    what,
                    key or self.url,
                    self._redact(str(exc)),
                    attempt,
                    delay,
                )
                time.sleep(delay)

    # -- the interface

    def check(self) -> None:
        """Fail fast with one clear error on wrong credentials, a missing bucket or an unreachable endpoint."""
        self._call("open", None, lambda: self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix, MaxKeys=1))

    def put_file(self, local: Path, key: str) -> None:
        from boto3.s3.transfer import create_transfer_manager

        def upload() -> None:
            # The transfer manager (not client.upload_file) so errors keep their botocore type.
            with create_transfer_manager(self.client, self.transfer_config) as tm:
                tm.upload(str(local), self.bucket, self._key(key)).result()

        if not Path(local).is_file():
            raise StorageError(f"put {self.url}/{key}: local file {local} does not exist")
        self._call("put", key, upload)

    def get_file(self, key: str, local: Path) -> None:
        from boto3.s3.transfer import create_transfer_manager

        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}{TEMP_MARK}{uuid.uuid4().hex}")

        def download() -> None:
            with create_transfer_manager(self.client, self.transfer_config) as tm:
                tm.download(self.bucket, self._key(key), str(tmp)).result()

        try:
            self._call("get", key, download)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put", key, lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data))

    def put_folder_marker(self) -> None:
        """Write ``<prefix>/`` (an empty object, as S3 consoles make a folder) so that the prefix exists."""
        marker = f"{self.prefix}/"
        self._call("put", "", lambda: self.client.put_object(Bucket=self.bucket, Key=marker, Body=b""))

    def get_bytes(self, key: str) -> bytes:
        def get() -> bytes:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

        return self._call("get", key, get)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create-only PUT (``If-None-Match: *``). A retried request whose first attempt did land reads as
        False: callers that must know should compare the stored bytes."""
        try:
            self._call(
                "put_if_absent",
                key,
                lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"),
            )
            return True
        except StorageError as e:
            if e.code in CONFLICT_CODES:
                return False
            raise

    def exists(self, key: str) -> bool:
        try:
            self._call("exists", key, lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key)))
            return True
        except NotFoundError:
            return False

    def list(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        strip = len(self.prefix) + 1 if self.prefix else 0

        def pages() -> list[str]:
            paginator = self.client.get_paginator("list_objects_v2")
            keys = []
            for page in paginator.paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.config.page_size}
            ):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
            return keys

        return sorted(self._call("list", prefix or None, pages))

    def delete(self, keys: Iterable[str]) -> None:
        keys = [self._key(k) for k in keys]
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            response = self._call(
                "delete",
                None,
                lambda b=batch: self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": b, "Quiet": True}),
            )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StorageError(
                    f"delete {self.url}/{first.get('Key')}: {first.get('Code')}: {first.get('Message')} "
                    f"({len(errors)} keys failed); check delete permission on bucket {self.bucket!r}"
                )
