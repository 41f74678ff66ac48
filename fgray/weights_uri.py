"""Weights a config field names, as a local path the loaders open: ``backbone.pretrained``, the CLIP
teacher's ``pretrained``, ASS's ``selector.weights``, DVA's ``detector.path``, PP-SSL's ``corpus`` file.
torch.load, timm, open_clip and transformers' ``from_pretrained`` open files, not pyarrow streams.

Accepted values: a local path (``~`` expanded), ``file:///x`` (a folder every node mounts: ``/x``) and
an object-store URI (``s3://``, ``gs://``) of a file or a folder, read through ``fgray.storage``'s
filesystems (so an S3 endpoint reaches it). An object-store value is copied once per node into
``$FGRAY_CACHE/weights/<hash of the URI>/<its basename>`` (``FGRAY_CACHE``: ``~/.cache/fgray``) and
reused while every file's size and modification time are the store's: weights re-uploaded to the same
URI are of the same size (the same architecture), so size alone would keep a stale copy. The processes
of one node (a trial's workers, the embedding cache's actors) take turns on a lock file: the first
copies, the others then find the copy fresh. A copy is written under a temporary name and renamed into
place, so a reader never opens half a file. Imports no Ray or torch.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import shutil
import tempfile
from typing import Iterator

import pyarrow.fs as pafs

from fgray import storage
from fgray.node_paths import StoreUnreachable, is_object_store, local_path

CHUNK = 1 << 22  # bytes per read of a stream: weights are hundreds of MB


def cache_root() -> str:
    """Where this node keeps its copies (``FGRAY_CACHE`` as the synthetic set's cache reads it)."""
    root = os.environ.get("FGRAY_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "fgray")
    return os.path.join(root, "weights")


def stored_type(value: str) -> str | None:
    """``"file"``, ``"folder"`` or None (nothing there) for an object-store URI; ``StoreUnreachable``
    when the store cannot be asked."""
    try:
        fs, inner = storage.filesystem(value)
        kind = fs.get_file_info(inner).type
    except OSError as err:
        cause = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise StoreUnreachable(f"{value} cannot be read ({cause})") from None
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "folder"}.get(kind)


def stored_file(value: str) -> bool:
    """Whether a local path or URI (``file://``, ``s3://``, ...) names a file."""
    return stored_type(value) == "file" if is_object_store(value) else os.path.isfile(local_path(value))


def local_weights(value: str) -> str:
    """The local path of the file or folder ``value`` names: ``file:///x`` -> ``/x``, a local path
    ``~``-expanded (neither needs to exist), an object-store URI -> its copy in this node's cache,
    made or refreshed here. FileNotFoundError when the URI names nothing."""
    if not is_object_store(value):
        return local_path(value)
    fs, inner = storage.filesystem(value)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"{value}: no such object or folder in the store")
    key = hashlib.sha1(value.rstrip("/").encode()).hexdigest()[:16]
    target = os.path.join(cache_root(), key, posixpath.basename(inner.rstrip("/")) or "weights")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with _node_lock(os.path.dirname(target)):  # one copy per node: the others wait for it, then reuse it
        if info.type == pafs.FileType.File:
            if not _fresh(target, info):
                if os.path.isdir(target):  # the URI named a folder before
                    _discard(target)
                _download(fs, info, target)
            return target
        files = {posixpath.relpath(i.path, inner): i
                 for i in fs.get_file_info(pafs.FileSelector(inner, recursive=True)) if i.type == pafs.FileType.File}
        if not _fresh_folder(target, files):
            _download_folder(fs, files, target)
        return target


@contextlib.contextmanager
def _node_lock(folder: str) -> Iterator[None]:
    """An exclusive lock on ``folder/.lock`` among this node's processes (a trial's workers, the embedding
    cache's actors start together): released when the holder exits, however it exits (flock)."""
    with open(os.path.join(folder, ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fresh(path: str, info: pafs.FileInfo) -> bool:
    """Whether ``path`` is a copy of the stored file ``info``: its size, and its time where the store has one."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return False
    return (os.path.isfile(path) and stat.st_size == info.size
            and (info.mtime_ns is None or stat.st_mtime_ns == info.mtime_ns))


def _fresh_folder(path: str, files: dict[str, pafs.FileInfo]) -> bool:
    """Whether the folder ``path`` holds exactly ``files`` (relative name -> stored file), each fresh."""
    if not os.path.isdir(path):
        return False
    here = {os.path.relpath(os.path.join(d, f), path).replace(os.sep, "/") for d, _, names in os.walk(path)
            for f in names}
    return here == set(files) and all(_fresh(os.path.join(path, name), info) for name, info in files.items())


def _copy(fs: pafs.FileSystem, info: pafs.FileInfo, dest: str) -> None:
    """The stored file ``info`` into ``dest``, stamped with its time (what ``_fresh`` compares)."""
    with fs.open_input_stream(info.path) as stream, open(dest, "wb") as out:
        while chunk := stream.read(CHUNK):
            out.write(chunk)
    if info.mtime_ns is not None:
        os.utime(dest, ns=(info.mtime_ns, info.mtime_ns))


def _download(fs: pafs.FileSystem, info: pafs.FileInfo, target: str) -> None:
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=".part-")
    os.close(fd)
    try:
        _copy(fs, info, temp)
        os.replace(temp, target)  # atomic: a reader opens the old copy or the whole new one
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def _download_folder(fs: pafs.FileSystem, files: dict[str, pafs.FileInfo], target: str) -> None:
    """The stored folder into ``target`` (under ``_node_lock``): built aside, then renamed into place
    whole; a stale copy there is discarded first (a process still reading a file of it keeps reading it)."""
    temp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".part-")
    try:
        for name, info in files.items():
            dest = os.path.join(temp, *name.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            _copy(fs, info, dest)
        if os.path.lexists(target):
            _discard(target)
        os.rename(temp, target)
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _discard(path: str) -> None:
    """Move ``path`` aside (one rename: it is gone at once for every process), then delete it."""
    aside = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=".stale-")
    os.rename(path, os.path.join(aside, "old"))
    shutil.rmtree(aside, ignore_errors=True)
