"""Where results, checkpoints, caches and shards live: a local folder or a URI (``s3://``, ``gs://``,
``file://``), always through pyarrow filesystems, decided here only.

One place, because of S3-compatible services (MinIO, a cloud's own object store, the tests' local
server): their endpoint is given as AWS tools take it, ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL``, which pyarrow ignores. Every reader and writer of fgray, and Ray's own storage
(``ray_storage``: Tune's and Train's ``storage_filesystem``, checkpoints), gets the filesystem from
here, so the endpoint reaches them all; nothing branches on "is this a local path" elsewhere.
"""
from __future__ import annotations

import os
import posixpath

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
COMPLETE_MARKER = "_COMPLETE"  # written last into a writer folder: readers take only folders that have it


def is_uri(path: str) -> bool:
    return "://" in str(path)


def absolute(path: str) -> str:
    """A local path made absolute (``~`` expanded); a URI as it is."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    """``base`` / parts, for local paths and URIs alike."""
    return posixpath.join(base.rstrip("/"), *parts) if is_uri(base) else os.path.join(base, *parts)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` of a local path or a URI. Filesystems are cached per
    scheme, bucket and endpoint: resolving a bucket's region is a network round trip."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), absolute(path)
    scheme, rest = path.split("://", 1)
    endpoint = _endpoint() if scheme == "s3" else None
    if endpoint is None and (scheme in ("file", "local") or "?" in rest):  # options in the URI: not cached
        return pafs.FileSystem.from_uri(path)
    key = (scheme, rest.split("/", 1)[0], endpoint)
    if key not in _CACHE:
        _CACHE[key] = (pafs.S3FileSystem(endpoint_override=endpoint) if endpoint
                       else pafs.FileSystem.from_uri(path)[0])
    return _CACHE[key], rest.rstrip("/")


_CACHE: dict[tuple, pafs.FileSystem] = {}


def _endpoint() -> str | None:
    return next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), None)


def ray_storage(path: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for Ray Tune / Train / ``Checkpoint``: a URI becomes its
    filesystem and the path inside it (so an S3 endpoint reaches Ray), a local path stays as it is."""
    if not is_uri(path):
        return absolute(path), None
    fs, inner = filesystem(path)
    return inner, fs


def check_reachable(path: str) -> None:
    """Raise ``OSError`` naming the cause when a URI's bucket (its first component) cannot be read:
    no such bucket, no credentials, no network. A local folder is created when written."""
    if not is_uri(path) or path.startswith(("file://", "local://")):
        return
    fs, inner = filesystem(path)
    bucket = inner.split("/", 1)[0]
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        raise OSError(f"no bucket {bucket!r} there")


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write a file, creating its folder (object stores have none to create)."""
    fs, inner = filesystem(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as stream:
        stream.write(data)


# ------------------------------------------------------------------------------ writer folders
# Computed-once outputs (the embedding cache, a detector's boxes) live under an address that hashes
# what they depend on, one folder per writer: writers that race never share a file, and a folder
# counts once its ``_COMPLETE`` marker, written last, is there.


def complete_folders(base: str) -> list[str]:
    """The finished writer folders under ``base`` (one address), by name."""
    fs, path = filesystem(base)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    folders = sorted((i for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.Directory),
                     key=lambda i: i.base_name)
    return [f"{base.rstrip('/')}/{info.base_name}" for info in folders
            if fs.get_file_info(posixpath.join(info.path, COMPLETE_MARKER)).type == pafs.FileType.File]


def write_complete(folder: str, table: pa.Table) -> str:
    """Write ``table`` as a writer folder's one Parquet file, then its marker; returns ``folder``."""
    fs, path = filesystem(folder)
    fs.create_dir(path, recursive=True)
    pq.write_table(table, posixpath.join(path, "part-00000.parquet"), filesystem=fs)
    with fs.open_output_stream(posixpath.join(path, COMPLETE_MARKER)) as stream:
        stream.write(b"ok\n")
    return folder


def read_folder(folder: str) -> pa.Table:
    """A writer folder's table (the marker is skipped: its name starts with ``_``)."""
    fs, path = filesystem(folder)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table()
