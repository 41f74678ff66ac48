"""Small helpers shared by the layout readers: paths on local disks or ``s3://`` (pyarrow
filesystems), whitespace tables, ``.mat`` files, and the one-line :class:`DatasetFormatError`.

Box convention of every reader: ``(x1, y1, x2, y2)`` floats in pixel-*edge* coordinates of the
original image, origin at the image's top-left corner, so a box covering a W x H image is
``(0, 0, W, H)``. Datasets that publish 1-based inclusive pixel indices (MATLAB / PASCAL VOC:
Cars, Aircraft, Dogs) are converted with :func:`box_from_1based`; ``x y w h`` boxes
(CUB, NABirds) with :func:`box_from_xywh`.
"""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Paths and filesystems are fgray.storage's (the readers' and prepare's names for them).
from fgray.storage import absolute, filesystem, is_uri, join  # noqa: F401

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
Box = tuple[float, float, float, float]


class DatasetFormatError(ValueError):
    """A dataset file is missing or does not look as published. ``str(e)`` is one line:
    ``"<file>: <what was expected>"`` (``"<file>:<line>: ..."`` for a bad line)."""

    def __init__(self, path: str, expected: str, line: int | None = None):
        self.path = str(path)
        self.expected = expected
        self.line = line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {expected}")


# --------------------------------------------------------------------------- paths / files


def normalize_root(root: str | os.PathLike) -> str:
    """Absolute local path, or the URI unchanged (minus a trailing slash)."""
    root = absolute(str(root))
    return root.rstrip("/") if is_uri(root) else root


def relpath(path: str, root: str) -> str:
    """``path`` relative to ``root`` with forward slashes (the image-id suffix)."""
    if is_uri(root):
        prefix = root.rstrip("/") + "/"
        return path[len(prefix):] if path.startswith(prefix) else path
    return os.path.relpath(path, root).replace(os.sep, "/")


def _info(path: str):
    import pyarrow.fs as pafs

    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    return info, pafs.FileType


def exists(path: str) -> bool:
    if not is_uri(path):
        return os.path.exists(path)
    info, ft = _info(path)
    return info.type != ft.NotFound


def is_dir(path: str) -> bool:
    if not is_uri(path):
        return os.path.isdir(path)
    info, ft = _info(path)
    return info.type == ft.Directory


def is_file(path: str) -> bool:
    if not is_uri(path):
        return os.path.isfile(path)
    info, ft = _info(path)
    return info.type == ft.File


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        with open(path, "rb") as f:
            return f.read()
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def require_file(path: str, expected: str) -> bytes:
    """The file's bytes, or a one-line error naming the file and what it should hold."""
    try:
        return read_bytes(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, OSError) as e:
        if isinstance(e, (FileNotFoundError, NotADirectoryError)) or not exists(path):
            raise DatasetFormatError(path, f"missing; expected {expected}") from None
        raise DatasetFormatError(path, f"unreadable ({e}); expected {expected}") from None


def read_many(paths: Sequence[str], expected: str) -> list[bytes]:
    """Read many small files (XML boxes); threads hide the latency of remote filesystems."""
    if not paths:
        return []
    if not is_uri(paths[0]):
        return [require_file(p, expected) for p in paths]
    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(lambda p: require_file(p, expected), paths))


def list_files(root: str) -> list[tuple[str, int, int]]:
    """Every file below ``root``: ``(path, size, mtime_ns)``, recursively, hidden entries skipped."""
    import pyarrow.fs as pafs

    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    out = []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base.rstrip("/")) + 1:] if info.path.startswith(base.rstrip("/")) else info.path
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        mtime = info.mtime_ns if info.mtime_ns is not None else 0
        out.append((join(root, *rel.split("/")), int(info.size or 0), int(mtime)))
    return out


def list_dirs(root: str) -> list[str]:
    """Names of the immediate sub-folders of ``root`` (hidden ones skipped), sorted."""
    import pyarrow.fs as pafs

    fs, base = filesystem(root)
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=False, allow_not_found=True))
    return sorted(
        i.base_name for i in infos if i.type == pafs.FileType.Directory and not i.base_name.startswith(".")
    )


def find_root(root: str, marker: str, subfolders: Iterable[str]) -> str:
    """``root`` if it holds ``marker``; else the first of ``subfolders`` (the folder the
    archive unpacks to, e.g. ``CUB_200_2011``) that does; else ``root`` (errors name it)."""
    if exists(join(root, marker)):
        return root
    for sub in subfolders:
        if exists(join(root, sub, marker)):
            return join(root, sub)
    return root


# --------------------------------------------------------------------------- text tables


def read_lines(path: str, expected: str, skip: int = 0) -> list[tuple[int, str]]:
    """Non-blank lines as ``(1-based line number, stripped text)``, after ``skip`` header lines."""
    data = require_file(path, expected)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = text.splitlines()
    if len(lines) < skip:
        raise DatasetFormatError(path, f"expected {skip} header line(s), the file has {len(lines)}")
    return [(i + 1, ln.strip()) for i, ln in enumerate(lines) if i >= skip and ln.strip()]


def read_table(
    path: str,
    types: Sequence[Callable[[str], object]],
    fmt: str,
    *,
    rest: bool = False,
    skip: int = 0,
    lines: list[tuple[int, str]] | None = None,
) -> list[tuple]:
    """Parse a whitespace-separated table with one column per entry of ``types``.

    ``fmt`` describes a line for error messages, e.g. ``"<image_id> <class_id>"``. With
    ``rest=True`` the last column takes the remainder of the line (names with spaces).
    A line with the wrong number of fields or an unparsable value raises
    ``DatasetFormatError("<path>:<line>: expected '<fmt>', got '...'")``.
    """
    n = len(types)
    rows = []
    for lineno, line in lines if lines is not None else read_lines(path, f"lines '{fmt}'", skip):
        fields = line.split(None, n - 1) if rest else line.split()
        if len(fields) != n:
            raise DatasetFormatError(path, f"expected '{fmt}', got {_clip(line)!r}", lineno)
        try:
            rows.append(tuple(t(v) for t, v in zip(types, fields)))
        except ValueError:
            raise DatasetFormatError(path, f"expected '{fmt}', got {_clip(line)!r}", lineno) from None
    if not rows:
        raise DatasetFormatError(path, f"empty; expected lines '{fmt}'")
    return rows


def _clip(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def lookup(table: dict, key, path: str, what: str):
    """``table[key]`` or an error naming the file that lacks the entry."""
    try:
        return table[key]
    except KeyError:
        raise DatasetFormatError(path, f"no entry for {what} {key!r}") from None


# --------------------------------------------------------------------------- .mat files


def load_mat(path: str, keys: Sequence[str], expected: str) -> dict[str, np.ndarray]:
    """Load a MATLAB v5 file (``scipy.io.loadmat``, squeezed) and check it holds ``keys``."""
    from scipy.io import loadmat

    data = require_file(path, expected)
    try:
        mat = loadmat(io.BytesIO(data), squeeze_me=True)
    except NotImplementedError:
        raise DatasetFormatError(path, f"MATLAB v7.3 (HDF5) file; expected a v5 .mat with {expected}") from None
    except Exception as e:  # scipy raises ValueError / TypeError / MatReadError on garbage
        raise DatasetFormatError(path, f"not a readable .mat file ({type(e).__name__}); expected {expected}") from None
    missing = [k for k in keys if k not in mat]
    if missing:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise DatasetFormatError(path, f"expected variable(s) {missing} ({expected}); found {found}")
    return mat


def mat_vector(mat: dict, key: str, path: str) -> np.ndarray:
    """A squeezed 1-D view of a .mat variable (cells of strings become a str object array)."""
    arr = np.atleast_1d(np.asarray(mat[key]))
    if arr.dtype == object:
        arr = np.array([_scalar(v) for v in arr.ravel()], dtype=object)
    return arr.ravel()


def mat_struct(mat: dict, key: str, fields: Sequence[str], path: str) -> dict[str, np.ndarray]:
    """Columns of a struct array (``annotations``) as 1-D arrays, checking the field names."""
    arr = np.atleast_1d(np.asarray(mat[key]))
    names = arr.dtype.names or ()
    missing = [f for f in fields if f not in names]
    if missing:
        raise DatasetFormatError(
            path, f"expected struct array {key!r} with fields {list(fields)}; missing {missing}, found {list(names)}"
        )
    return {f: np.array([_scalar(v) for v in arr[f].ravel()], dtype=object) for f in fields}


def _scalar(value):
    """Unwrap the 0-d / 1-element arrays that squeezed cells and struct fields come as."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            break
        value = value.reshape(()).item() if value.dtype != object else value.ravel()[0]
    if isinstance(value, np.generic):
        value = value.item()
    return value


def as_int(value, path: str, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise DatasetFormatError(path, f"expected an integer {what}, got {value!r}") from None
    if not np.isfinite(f) or f != int(f):
        raise DatasetFormatError(path, f"expected an integer {what}, got {value!r}")
    return int(f)


def as_str(value, path: str, what: str) -> str:
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str) or not value:
        raise DatasetFormatError(path, f"expected a non-empty string {what}, got {value!r}")
    return value


# --------------------------------------------------------------------------- boxes


def box_from_xywh(x: float, y: float, w: float, h: float) -> Box:
    return (float(x), float(y), float(x) + float(w), float(y) + float(h))


def box_from_1based(xmin: float, ymin: float, xmax: float, ymax: float) -> Box:
    """1-based inclusive pixel indices (MATLAB, PASCAL VOC) -> 0-based pixel edges."""
    return (float(xmin) - 1.0, float(ymin) - 1.0, float(xmax), float(ymax))


def dense_labels(ids: Iterable) -> dict:
    """``{official id: 0-based label}`` in ascending id order."""
    return {cid: i for i, cid in enumerate(sorted(set(ids)))}
