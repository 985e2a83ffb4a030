"""Where the lakehouse lives: a local folder or an S3-compatible object store.

One :class:`Storage` value carries the root (``/data/lakehouse`` or ``s3://bucket/prefix``)
and, for object stores, the endpoint and credentials. Everything that touches the lakehouse
derives from it: table URIs, deltalake ``storage_options``, the DuckDB S3 secret and a
pyarrow filesystem for artefacts (overlays, contact sheets, data docs, exports).

Credentials are held here only to be handed to the engines; :meth:`Storage.__repr__` and every
error message leave them out.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

OBJECT_STORE_SCHEMES = frozenset({"s3", "s3a"})
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class StorageError(RuntimeError):
    """The lakehouse's storage cannot be reached or refused the request."""


@dataclass(frozen=True)
class Storage:
    """A lakehouse root and how to reach it.

    Attributes:
        root: a local folder, or ``s3://bucket/prefix``.
        endpoint: S3 endpoint URL (``http://127.0.0.1:9000`` for MinIO or a test server);
            None means AWS's own endpoint for ``region``.
        access_key_id, secret_access_key: credentials; None leaves them to the engines'
            default chain (instance role, ``AWS_*`` variables).
        region: S3 region.
        allow_http: allow a plain-http endpoint (local test servers only).
    """

    root: str
    endpoint: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    region: str | None = None
    allow_http: bool = False

    @property
    def is_object_store(self) -> bool:
        return urlparse(self.root).scheme in OBJECT_STORE_SCHEMES

    @property
    def base(self) -> str:
        """The root as an absolute path or a URL without trailing slash."""
        if self.is_object_store:
            parsed = urlparse(self.root)
            if not parsed.netloc:
                raise StorageError(f"lakehouse {self.root!r} names no bucket: use s3://bucket/prefix")
            return f"s3://{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
        if "://" in self.root:
            scheme = urlparse(self.root).scheme
            raise StorageError(
                f"lakehouse {self.root!r}: scheme {scheme!r} is not supported; use a local "
                "folder or s3://bucket/prefix (S3-compatible stores: set the endpoint)"
            )
        return str(Path(self.root).resolve())

    def join(self, *parts: str) -> str:
        """``root/part/...`` as a path or URL."""
        return "/".join([self.base, *(part.strip("/") for part in parts)])

    def delta_options(self) -> dict[str, str] | None:
        """deltalake ``storage_options`` (None for a local folder)."""
        if not self.is_object_store:
            return None
        options = {
            # Conditional PUT (If-None-Match) is how deltalake >= 1.6.1 commits safely on S3;
            # the DynamoDB locking provider was removed.
            "conditional_put": "etag",
        }
        if self.endpoint:
            options["aws_endpoint_url"] = self.endpoint
        if self.region:
            options["aws_region"] = self.region
        if self.access_key_id:
            options["aws_access_key_id"] = self.access_key_id
        if self.secret_access_key:
            options["aws_secret_access_key"] = self.secret_access_key
        if self.allow_http:
            options["aws_allow_http"] = "true"
        return options

    def duckdb_secret_sql(self) -> str | None:
        """``CREATE SECRET`` for DuckDB's httpfs (None for a local folder)."""
        if not self.is_object_store:
            return None
        parts = ["TYPE s3"]
        if self.access_key_id:
            parts.append(f"KEY_ID {sql_literal(self.access_key_id)}")
        if self.secret_access_key:
            parts.append(f"SECRET {sql_literal(self.secret_access_key)}")
        if self.region:
            parts.append(f"REGION {sql_literal(self.region)}")
        if self.endpoint:
            parsed = urlparse(self.endpoint)
            parts.append(f"ENDPOINT {sql_literal(parsed.netloc or parsed.path)}")
            parts.append("URL_STYLE 'path'")
            parts.append(f"USE_SSL {'false' if parsed.scheme == 'http' else 'true'}")
        return f"CREATE OR REPLACE SECRET pathgen_lakehouse ({', '.join(parts)})"

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root's path inside it."""
        if not self.is_object_store:
            return pafs.LocalFileSystem(), self.base
        parsed = urlparse(self.endpoint) if self.endpoint else None
        s3 = pafs.S3FileSystem(
            access_key=self.access_key_id,
            secret_key=self.secret_access_key,
            region=self.region,
            endpoint_override=parsed.netloc if parsed else None,
            scheme=parsed.scheme if parsed else "https",
            allow_bucket_creation=False,
        )
        return s3, self.base.removeprefix("s3://")

    def put_bytes(self, relative: str, data: bytes) -> str:
        """Write ``data`` at ``root/relative``; return its path or URL."""
        fs, base = self.filesystem()
        target = f"{base}/{relative.strip('/')}"
        try:
            if not self.is_object_store:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            with fs.open_output_stream(target) as handle:
                handle.write(data)
        except OSError as error:
            raise self.error(f"writing {relative}", error) from None
        return self.join(relative)

    def upload_tree(self, local: Path, relative: str, *, delete_stale: bool) -> str:
        """Copy folder ``local`` to ``root/relative`` (object stores only); return the URL.

        With ``delete_stale``, objects under the prefix that ``local`` no longer has are
        removed after every new file is in place, so readers never see a half-new tree
        missing files.
        """
        fs, base = self.filesystem()
        prefix = f"{base}/{relative.strip('/')}"
        written = set()
        try:
            for path in sorted(p for p in local.rglob("*") if p.is_file()):
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                with fs.open_output_stream(key) as handle:
                    handle.write(path.read_bytes())
                written.add(key)
            if delete_stale:
                selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
                for info in fs.get_file_info(selector):
                    if info.type == pafs.FileType.File and info.path not in written:
                        fs.delete_file(info.path)
        except OSError as error:
            raise self.error(f"uploading {relative}", error) from None
        return self.join(relative)

    def download_tree(self, relative: str, local: Path) -> None:
        """Copy ``root/relative`` (object stores only) into folder ``local``."""
        fs, base = self.filesystem()
        prefix = f"{base}/{relative.strip('/')}"
        try:
            selector = pafs.FileSelector(prefix, recursive=True, allow_not_found=True)
            for info in fs.get_file_info(selector):
                if info.type != pafs.FileType.File:
                    continue
                target = local / info.path[len(prefix) + 1 :]
                target.parent.mkdir(parents=True, exist_ok=True)
                with fs.open_input_stream(info.path) as handle:
                    target.write_bytes(handle.read())
        except OSError as error:
            raise self.error(f"downloading {relative}", error) from None

    @contextlib.contextmanager
    def folder(self, relative: str, *, mirror: bool = False) -> Iterator[Path]:
        """A local folder standing for ``root/relative``.

        Local lakehouse: the folder itself. Object store: ``<temporary root>/relative``
        (holding a copy of what is there when ``mirror``), uploaded when the block ends
        without an error; with ``mirror`` false the upload replaces the prefix (stale
        objects deleted). Either way the yielded folder's ancestors mirror the root's
        layout, so code that takes a lakehouse root can be given the matching ancestor.
        """
        if not self.is_object_store:
            path = Path(self.join(relative))
            path.mkdir(parents=True, exist_ok=True)
            yield path
            return
        scratch = Path(tempfile.mkdtemp(prefix="pathgen-stage-"))
        staging = scratch / relative.strip("/")
        staging.mkdir(parents=True, exist_ok=True)
        try:
            if mirror:
                self.download_tree(relative, staging)
            yield staging
            self.upload_tree(staging, relative, delete_stale=not mirror)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def error(self, action: str, error: BaseException) -> StorageError:
        """A :class:`StorageError` naming the lakehouse, the endpoint and the likely fix."""
        return StorageError(describe_failure(self, action, error))


def describe_failure(storage: Storage, action: str, error: BaseException) -> str:
    """One message naming the lakehouse URI, the endpoint and what to check."""
    text = ANSI_ESCAPE.sub("", str(error))
    for secret in (storage.secret_access_key, storage.access_key_id):
        if secret:
            text = text.replace(secret, "***")
    lowered = text.lower()
    where = storage.base + (f" (endpoint {storage.endpoint})" if storage.endpoint else "")
    if any(
        word in lowered
        for word in (
            "connection refused",
            "connect error",
            "error sending request",
            "dns error",
            "failed to connect",
            "couldn't connect",
            "tcp connect",
            "timed out",
        )
    ):
        hint = "the object store is unreachable: check PATHGEN_S3_ENDPOINT and that the server is up"
    elif any(
        word in lowered
        for word in (
            "invalidaccesskeyid",
            "signaturedoesnotmatch",
            "signature_does_not_match",
            "access denied",
            "accessdenied",
            "forbidden",
            "403",
            "invalid access key",
            "credentials",
        )
    ):
        hint = "the object store refused the credentials: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
    elif "nosuchbucket" in lowered or "bucket does not exist" in lowered or "404" in lowered:
        hint = "the bucket does not exist: create it first"
    else:
        hint = "see the cause in brackets"
    return f"lakehouse {where}: {action} failed: {hint} ({type(error).__name__}: {text[:400]})"


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"
