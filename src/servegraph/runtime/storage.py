"""Fetch a Model node's ``storageUri`` into a local model folder (Triton layout).

Used by ``servegraph run`` and, in the cluster, by the model puller init container, so it
imports neither kopf nor kubernetes nor the runtime: the standard library, plus boto3 or
google-cloud-storage when a URI needs them and they are installed.

- a plain path or ``file://``: the folder itself (no copy);
- ``http://`` / ``https://``: a ``.tar.gz``, ``.tgz``, ``.tar`` or ``.zip`` archive of the
  model folder, downloaded (with a timeout and a size cap) and unpacked safely;
- ``s3://bucket/prefix`` (boto3) and ``gs://bucket/prefix`` (google-cloud-storage): every
  object under the prefix, keeping relative paths, or one archive object;
- ``pvc://``: only in a cluster, where the operator mounts the claim.

An archive whose entries sit in a single top-level folder has that folder as the model
folder. Whatever is fetched lands at ``target`` (replacing what was there), so the model
folder takes ``target``'s name, as a local folder's name is the model's name.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import urlparse

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_BYTES = 8 * 1024**3
"""The most a download may be, and the most an archive may unpack to."""
_CHUNK = 1024 * 1024


class StorageError(RuntimeError):
    """A storageUri that cannot be fetched here; the message names the URI and why."""


def model_folder_name(uri: str) -> str:
    """The name a fetched model folder gets: the URI's last segment without an archive suffix."""
    path = urlparse(uri.strip()).path if "://" in uri else uri
    name = PurePosixPath(path.rstrip("/")).name or "model"
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def cache_target(uri: str, cache: Path) -> Path:
    """Where ``uri`` is fetched to under ``cache``: ``{cache}/{hash of the URI}/{model folder name}``."""
    digest = hashlib.sha256(uri.strip().encode()).hexdigest()[:16]
    return cache / digest / model_folder_name(uri)


def fetch_model(
    uri: str,
    target: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Materialise the model folder ``uri`` names at ``target`` and return where it is.

    A local path or ``file://`` URI is returned as written (relative paths stay relative to
    the caller's folder) and nothing is copied. Anything remote is fetched afresh: what was
    at ``target`` is replaced only once the fetch has succeeded.
    """
    uri = uri.strip()
    if "://" not in uri:
        return Path(uri)
    scheme = urlparse(uri).scheme.lower()
    if scheme == "file":
        return Path(uri[len("file://"):])
    if scheme == "pvc":
        raise StorageError(
            f"storageUri {uri}: pvc:// is served only inside a cluster, where the operator mounts"
            " the claim; outside one use a local path, http(s)://, s3:// or gs://"
        )
    fetchers: dict[str, Callable[[str, Path, float, int], None]] = {
        "http": _fetch_http,
        "https": _fetch_http,
        "s3": _fetch_s3,
        "gs": _fetch_gs,
    }
    if scheme not in fetchers:
        raise StorageError(
            f"storageUri {uri}: unsupported scheme '{scheme}://'"
            " (use a local path, file://, http(s)://, s3://, gs:// or pvc://)"
        )
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        fetchers[scheme](uri, staging, timeout, max_bytes)
        folder = _model_root(staging)
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.exists():
            shutil.rmtree(target)
        os.replace(folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _model_root(staging: Path) -> Path:
    """The model folder in what was fetched: a single top-level folder, or all of it.

    A lone numbered folder is a version folder of a config-less model, not the model folder.
    """
    entries = [e for e in staging.iterdir() if not e.name.startswith(".") and e.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir() and not _ascii_digits(entries[0].name):
        return entries[0]
    return staging


def _ascii_digits(text: str) -> bool:
    # str.isdigit alone accepts Unicode digits ("²") that int() refuses.
    return text.isascii() and text.isdigit()


# ----------------------------------------------------------------------------- archives


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _unsafe_member(name: str) -> bool:
    """Whether an archive member's name would land outside the folder it is unpacked into."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts


def extract_archive(uri: str, archive: Path, dest: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Unpack a tar (any compression) or zip ``archive`` of ``uri`` into ``dest``, safely.

    Members with absolute names or ``..`` are refused before anything is written; tar
    members are unpacked with the ``data`` filter (no links out, no devices, no setuid).
    """
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zipped:
            members = zipped.infolist()
            _check_members(uri, [m.filename for m in members], sum(m.file_size for m in members), max_bytes)
            zipped.extractall(dest)
        return
    if not tarfile.is_tarfile(archive):
        raise StorageError(
            f"storageUri {uri}: not a model folder archive"
            f" ({', '.join(ARCHIVE_SUFFIXES)} of the folder in repository layout)"
        )
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar_members = tar.getmembers()
            _check_members(uri, [m.name for m in tar_members], sum(m.size for m in tar_members), max_bytes)
            if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4 / 3.12
                tar.extractall(dest, filter="data")
            else:  # pragma: no cover - older Pythons: regular files and folders only
                plain = [m for m in tar_members if m.isfile() or m.isdir()]
                if len(plain) != len(tar_members):
                    odd = next(m.name for m in tar_members if not (m.isfile() or m.isdir()))
                    raise StorageError(f"storageUri {uri}: archive member '{odd}' is a link or device; refused")
                tar.extractall(dest, members=plain)
    except (tarfile.TarError, EOFError) as error:
        raise StorageError(f"storageUri {uri}: cannot unpack the archive: {error}") from None


def _check_members(uri: str, names: list[str], unpacked: int, max_bytes: int) -> None:
    bad = [n for n in names if _unsafe_member(n)]
    if bad:
        raise StorageError(
            f"storageUri {uri}: archive member '{bad[0]}' would be written outside the model"
            " folder (absolute path or '..'); refused"
        )
    if unpacked > max_bytes:
        raise StorageError(f"storageUri {uri}: the archive unpacks to {unpacked} bytes, over the cap of {max_bytes}")


def _copy_capped(uri: str, source: IO[bytes], dest: Path, max_bytes: int) -> None:
    written = 0
    with dest.open("wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise StorageError(f"storageUri {uri}: the download is over the cap of {max_bytes} bytes")
            out.write(chunk)


# ----------------------------------------------------------------------------- http(s)


def _fetch_http(uri: str, staging: Path, timeout: float, max_bytes: int) -> None:
    download = staging / ".download"
    request = urllib.request.Request(uri, headers={"User-Agent": "servegraph-model-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and _ascii_digits(length) and int(length) > max_bytes:
                raise StorageError(
                    f"storageUri {uri}: the download is {length} bytes, over the cap of {max_bytes}"
                )
            _copy_capped(uri, response, download, max_bytes)
    except urllib.error.HTTPError as error:
        error.close()
        raise StorageError(f"storageUri {uri}: HTTP {error.code} {error.reason}") from None
    except urllib.error.URLError as error:
        raise StorageError(f"storageUri {uri}: cannot download: {error.reason}") from None
    except OSError as error:  # a timeout or a dropped connection while reading
        raise StorageError(f"storageUri {uri}: download failed: {error}") from None
    try:
        extract_archive(uri, download, staging, max_bytes)
    finally:
        download.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- object stores


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise StorageError(f"storageUri {uri}: no bucket (expected {parsed.scheme}://bucket/prefix)")
    return parsed.netloc, parsed.path.lstrip("/")


def _fetch_objects(
    uri: str,
    staging: Path,
    max_bytes: int,
    keys: Iterator[tuple[str, int]],
    download: Callable[[str, Path], None],
) -> None:
    """Download every (key, size) under the URI's prefix into ``staging``, or one archive."""
    _, prefix = _bucket_and_prefix(uri)
    if is_archive_name(prefix):
        archive = staging / ".download"
        download(prefix, archive)
        try:
            if archive.stat().st_size > max_bytes:
                raise StorageError(f"storageUri {uri}: the download is over the cap of {max_bytes} bytes")
            extract_archive(uri, archive, staging, max_bytes)
        finally:
            archive.unlink(missing_ok=True)
        return
    folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    total = 0
    found = 0
    for key, size in keys:
        relative = key[len(folder):]
        if not key.startswith(folder) or not relative or relative.endswith("/"):
            continue  # outside the folder, or a folder placeholder
        if _unsafe_member(relative):
            raise StorageError(f"storageUri {uri}: object '{key}' would be written outside the model folder; refused")
        total += size
        if total > max_bytes:
            raise StorageError(f"storageUri {uri}: the objects are over the cap of {max_bytes} bytes")
        dest = staging / relative
        dest.parent.mkdir(parents=True, exist_ok=True)
        download(key, dest)
        found += 1
    if not found:
        raise StorageError(f"storageUri {uri}: no objects under this prefix")


def _cloud_call(uri: str, call: Callable[[], None]) -> None:
    """Run an object-store call; its library's errors become a StorageError naming the URI."""
    try:
        call()
    except StorageError:
        raise
    except Exception as error:  # noqa: BLE001 - botocore and google errors share no base class
        raise StorageError(f"storageUri {uri}: {type(error).__name__}: {error}") from None


def _fetch_s3(uri: str, staging: Path, timeout: float, max_bytes: int) -> None:
    try:
        import boto3  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise StorageError(f"storageUri {uri} needs boto3: pip install boto3") from None
    bucket, prefix = _bucket_and_prefix(uri)
    client: Any = boto3.client("s3")  # credentials, region and AWS_ENDPOINT_URL as boto3 reads them

    def keys() -> Iterator[tuple[str, int]]:
        folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
            for item in page.get("Contents", []):
                yield item["Key"], int(item.get("Size", 0))

    _cloud_call(uri, lambda: _fetch_objects(
        uri, staging, max_bytes, keys(), lambda key, dest: client.download_file(bucket, key, str(dest))
    ))  # fmt: skip


def _fetch_gs(uri: str, staging: Path, timeout: float, max_bytes: int) -> None:
    try:
        from google.cloud import storage  # type: ignore[import-not-found, import-untyped, attr-defined, unused-ignore]
    except ImportError:
        raise StorageError(
            f"storageUri {uri} needs google-cloud-storage: pip install google-cloud-storage"
        ) from None
    bucket_name, prefix = _bucket_and_prefix(uri)
    client: Any = storage.Client()
    bucket = client.bucket(bucket_name)

    def keys() -> Iterator[tuple[str, int]]:
        folder = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        for blob in client.list_blobs(bucket_name, prefix=folder):
            yield blob.name, int(blob.size or 0)

    _cloud_call(uri, lambda: _fetch_objects(
        uri, staging, max_bytes, keys(),
        lambda key, dest: bucket.blob(key).download_to_filename(str(dest), timeout=timeout),
    ))  # fmt: skip
