"""Object storage: artifacts and input files at fsspec URLs (``s3://bucket/prefix``; S3 through s3fs).

* :func:`is_url` tells a URL (``scheme://...``, not ``file://``) from a local path.
* :func:`filesystem` opens the fsspec file system of a URL. For S3 the endpoint and credentials come
  the standard way (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_REGION``, ``AWS_PROFILE``, ...), read by botocore itself; nothing here logs them.
* :func:`storage_error` turns what fsspec / botocore raise into one :class:`StorageError` line that
  names the URL: bucket missing, access denied, endpoint down, object missing.
* :class:`Cache`: the bounded local copy of remote artifacts that workers memory-map
  (``MINER_CACHE``, ``MINER_CACHE_LIMIT``), least recently used files evicted first.
"""

from __future__ import annotations

import errno
import os
import re
import uuid
from pathlib import Path

from miner.runtime.errors import MinerError

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://")

#: Eviction removes any copy but the one just fetched or written: a copy another process of this
#: machine has opened or memory-mapped stays readable (its disk space is freed when it is closed), and
#: one removed between another process's fetch and its open is fetched again
#: (:meth:`miner.io.artifacts.Artifacts.opened`).


class StorageError(MinerError):
    """Object storage cannot be used: bucket missing, access denied, endpoint down. The job fails
    with this one line and ``miner retry`` resumes it once the storage is back, as after a disk error."""

    exit_code = 1


def is_url(value) -> bool:
    """True for ``scheme://...`` strings other than ``file://`` (those are local paths)."""
    return isinstance(value, str) and bool(_URL.match(value)) and not value.lower().startswith("file://")


#: The standard variables botocore reads for S3 that ``miner config`` shows (secrets as ``***``).
AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
_AWS_SECRETS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def aws_settings(env: dict | None = None) -> dict:
    """The AWS variables that are set, lower-cased names, secrets replaced by ``***``."""
    env = os.environ if env is None else env
    return {name.lower(): "***" if name in _AWS_SECRETS else env[name] for name in AWS_VARS if env.get(name)}


def local_path(value) -> Path:
    """A local path given as a path or as ``file://...``."""
    text = os.fspath(value)
    return Path(text[len("file://"):]) if text.lower().startswith("file://") else Path(text)


def filesystem(url: str):
    """``(fsspec file system, path without the protocol)`` of ``url``; listings are never cached
    (another worker may have written an artifact since)."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - a dependency
        raise StorageError(f"{url}: fsspec is not installed (pip install fsspec s3fs)") from None
    protocol = url.split("://", 1)[0].lower()
    options: dict = {"use_listings_cache": False}
    if protocol in ("s3", "s3a"):
        options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60,
                                    "retries": {"max_attempts": 3, "mode": "standard"}}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["endpoint_url"] = endpoint
    try:
        fs = fsspec.filesystem(protocol, **options)
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{url}: no file system for {protocol}:// ({_first_line(exc)}; for s3:// pip install s3fs)") from None
    return fs, fs._strip_protocol(url)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _endpoint() -> str:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint"


def _is_connection_error(exc: BaseException) -> bool:
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError", "ConnectionClosedError",
                "ServerDisconnectedError", "ClientOSError", "ReadTimeoutError", "ConnectionError"}:
        return True
    return isinstance(exc, OSError) and exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT)


def storage_error(url: str, exc: BaseException, what: str = "") -> MinerError:
    """One line naming ``url`` for an exception of fsspec / s3fs / botocore."""
    if isinstance(exc, MinerError):
        return exc
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:  # s3fs wraps the botocore error
        seen.add(id(cause))
        if _is_connection_error(cause):
            return StorageError(f"{url}: cannot reach the object store at {_endpoint()} ({_first_line(cause)})")
        cause = cause.__cause__ or cause.__context__
    text = _first_line(exc)
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        return StorageError(f"{url}: bucket {bucket!r} does not exist (create it, or fix the URL)")
    if isinstance(exc, PermissionError) or "AccessDenied" in text or "Forbidden" in text or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text:
        return StorageError(f"{url}: access denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
    if isinstance(exc, FileNotFoundError):
        return StorageError(f"{url}: no such object")
    return StorageError(f"{url}: {what + ' failed: ' if what else ''}{text}")


def check_store(url: str) -> None:
    """Fail at once with one line when the bucket of ``url`` is missing, denied or unreachable."""
    fs, path = filesystem(url)
    try:
        fs.ls(path.rstrip("/"), detail=False)  # the prefix only: a policy may allow no more
    except FileNotFoundError as exc:
        if "bucket" in str(exc).lower():
            raise storage_error(url, exc) from None
        # an empty prefix in a bucket that exists: fine
    except Exception as exc:
        raise storage_error(url, exc) from None


def parse_size(text: str, name: str = "MINER_CACHE_LIMIT") -> int:
    """``20G``, ``512M``, ``1.5T``, ``1000000`` -> bytes (powers of 1024)."""
    from miner.runtime.errors import UsageError

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text), re.I)
    if not match:
        raise UsageError(f"{name}={text!r} is not a size (e.g. 20G, 512M, or bytes)")
    factor = 1024 ** " kmgt".index(match[2].lower() or " ")
    return int(float(match[1]) * factor)


class Cache:
    """Local copies of remote files under ``folder`` (one file per URL), at most ``limit`` bytes
    (beyond it only by the file just fetched, and by removed files still open). A file's
    modification time is its last use. Several processes of one machine may share the folder: downloads go to a
    temporary name and are renamed into place."""

    def __init__(self, folder: Path, limit: int) -> None:
        self.folder = Path(folder)
        self.limit = int(limit)

    def path_for(self, url: str) -> Path:
        protocol, rest = url.split("://", 1)
        parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
        return self.folder.joinpath(protocol, *parts)

    def temporary(self, url: str) -> Path:
        final = self.path_for(url)
        final.parent.mkdir(parents=True, exist_ok=True)
        return final.with_name(f".{final.name}.part-{os.getpid()}-{uuid.uuid4().hex[:8]}{final.suffix}")

    def fetch(self, fs, remote_path: str, url: str) -> Path:
        """The local copy of ``url``, downloaded when missing."""
        local = self.path_for(url)
        if _touch(local):
            return local
        tmp = self.temporary(url)
        try:
            fs.get_file(remote_path, str(tmp))
            os.replace(tmp, local)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and not tmp.exists():
                raise storage_error(url, exc) from None
            raise storage_error(url, exc, "download") from None
        except Exception as exc:
            raise storage_error(url, exc, "download") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        _touch(local)
        self.evict(keep=local)
        return local

    def adopt(self, tmp: Path, url: str) -> Path:
        """Keep ``tmp`` (an upload of ``url`` just made) as the cached copy of ``url``."""
        local = self.path_for(url)
        os.replace(tmp, local)
        _touch(local)
        self.evict(keep=local)
        return local

    def usage(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _files(self):
        for folder, _dirs, names in os.walk(self.folder):
            for name in names:
                path = Path(folder, name)
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                yield st.st_mtime, st.st_size, path

    def evict(self, keep: Path | None = None) -> None:
        """Remove the least recently used files until the cache fits its limit (never ``keep`` or a
        download under way). A file already opened or memory-mapped stays readable."""
        files = sorted(self._files())
        total = sum(size for _, size, _ in files)
        for _mtime, size, path in files:
            if total <= self.limit:
                break
            if path == keep or path.name.startswith("."):
                continue
            try:
                path.unlink()
                total -= size
            except FileNotFoundError:
                pass


def _touch(path: Path) -> bool:
    """Mark ``path`` as used now; False when it does not exist."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


# --------------------------------------------------------------------------- inputs at URLs

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
_BLOCK = 4 * 1024 * 1024


def input_error(url: str, exc: BaseException) -> MinerError:
    """The one-line InputFileError (exit 3) for an input at a URL: missing object, missing bucket,
    access denied, endpoint down."""
    from miner.runtime.errors import InputFileError

    if isinstance(exc, InputFileError):
        return exc
    if isinstance(exc, FileNotFoundError) and "bucket" not in str(exc).lower():
        return InputFileError(f"input file not found: {url} -- check the URL")
    problem = exc if isinstance(exc, MinerError) else storage_error(url, exc)
    return InputFileError(f"cannot read input file {problem}")


def open_input(url: str):
    """A remote input as a decompressed byte stream, read in 4 MiB blocks; gzip and xz by
    extension, else by magic bytes. Closing it closes the remote file too."""
    import gzip
    import lzma

    try:
        fs, path = filesystem(url)
        raw = fs.open(path, "rb", block_size=_BLOCK)
    except Exception as exc:
        raise input_error(url, exc) from None
    lower = url.lower()
    kind = "gz" if lower.endswith(".gz") else "xz" if lower.endswith(".xz") else None
    try:
        if kind is None:
            head = raw.read(len(_XZ_MAGIC))
            raw.seek(0)
            kind = "gz" if head.startswith(_GZIP_MAGIC) else "xz" if head.startswith(_XZ_MAGIC) else None
    except Exception as exc:
        raw.close()
        raise input_error(url, exc) from None
    if kind is None:
        import io

        return io.BufferedReader(raw, buffer_size=_BLOCK)  # readline(limit), as a local file has
    stream = gzip.GzipFile(fileobj=raw, mode="rb") if kind == "gz" else lzma.LZMAFile(raw)
    close_stream = stream.close

    def close() -> None:
        try:
            close_stream()
        finally:
            raw.close()

    stream.close = close  # the decompressor leaves a file object it was given open
    return stream


def input_size(url: str) -> int:
    """Size of the object at ``url``; one-line errors for a missing object, a folder, no access."""
    from miner.runtime.errors import InputFileError

    try:
        fs, path = filesystem(url)
        info = fs.info(path)
    except Exception as exc:
        raise input_error(url, exc) from None
    if info.get("type") == "directory":
        raise InputFileError(f"input path is a folder: {url} -- pass the URL of a text file with one sentence per line")
    return int(info.get("size") or 0)


def input_digest(url: str) -> str:
    """SHA-256 of the object's bytes, streamed (an ETag is no content hash)."""
    import hashlib

    digest = hashlib.sha256()
    try:
        fs, path = filesystem(url)
        with fs.open(path, "rb", block_size=_BLOCK) as f:
            while block := f.read(_BLOCK):
                digest.update(block)
    except Exception as exc:
        raise input_error(url, exc) from None
    return digest.hexdigest()
