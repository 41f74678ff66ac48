"""Layouts of your own data: an ImageFolder tree or a CSV file.

``imagefolder``: ``root/<class>/**/<image>``, all ``train``; or, when ``root/train/`` exists,
``root/{train,test}/<class>/**/<image>`` (also ``query/`` and ``gallery/``; ``val/``,
``valid/``, ``validation/`` count as ``train``, like the other readers' trainval). Classes
are the sorted folder names across splits (torchvision's order). Images are files with an
image extension; hidden files and folders are skipped.

``csv``: ``root`` is a ``.csv`` file, or a folder holding exactly one. Header row required;
columns ``path,label`` and optionally ``split`` (default ``train``) and ``x1,y1,x2,y2`` (a
box in original pixels; empty cells = no box). Paths are relative to the CSV's folder.
Labels are class names; classes are ordered numerically when every label is an integer,
else alphabetically.
"""
from __future__ import annotations

import csv
import io
import os
import posixpath

from fgray.data.sources.readers import register_reader
from fgray.data.sources.readers.common import (
    IMAGE_EXTENSIONS,
    DatasetFormatError,
    is_dir,
    is_uri,
    join,
    list_dirs,
    list_files,
    relpath,
    require_file,
)
from fgray.data.schema import Record

SPLIT_FOLDERS = {"train": "train", "test": "test", "query": "query", "gallery": "gallery",
                 "val": "train", "valid": "train", "validation": "train"}


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS)


@register_reader("imagefolder")
def read_imagefolder(root: str) -> list[Record]:
    if not is_dir(root):
        raise DatasetFormatError(root, "expected a folder with one sub-folder per class")
    top = list_dirs(root)
    if "train" in top:
        unknown = [d for d in top if d not in SPLIT_FOLDERS]
        if unknown:
            raise DatasetFormatError(
                root, f"has train/ but also {unknown}; expected only split folders {sorted(SPLIT_FOLDERS)}"
            )
        split_dirs = [(join(root, d), SPLIT_FOLDERS[d]) for d in top]
    else:
        split_dirs = [(root, "train")]

    found = []  # (relative path, class, split)
    for folder, split in split_dirs:
        for path, _, _ in list_files(folder):
            rel = relpath(path, folder)
            if "/" not in rel or not _is_image(rel):
                continue  # files directly in the split folder have no class
            found.append((relpath(path, root), rel.split("/", 1)[0], split))
    if not found:
        raise DatasetFormatError(root, "no images found; expected <root>/<class>/<image> "
                                       "or <root>/train/<class>/<image>")
    classes = sorted({c for _, c, _ in found})
    label_of = {c: i for i, c in enumerate(classes)}
    return [
        Record(
            path=join(root, *rel.split("/")),
            image_id=f"imagefolder/{rel}",
            label=label_of[cls],
            class_name=cls,
            split=split,
            bbox=None,
        )
        for rel, cls, split in sorted(found)
    ]


def _find_csv(root: str) -> str:
    if root.lower().endswith(".csv") and not is_dir(root):
        return root
    if not is_dir(root):
        raise DatasetFormatError(root, "expected a .csv file or a folder holding one")
    csvs = [p for p, _, _ in list_files(root) if p.lower().endswith(".csv") and "/" not in relpath(p, root)]
    if len(csvs) != 1:
        raise DatasetFormatError(root, f"expected exactly one .csv file in the folder, found {len(csvs)}")
    return csvs[0]


@register_reader("csv")
def read_csv(root: str) -> list[Record]:
    path = _find_csv(root)
    base = posixpath.dirname(path) if is_uri(path) else os.path.dirname(path)
    fmt = "a header row 'path,label[,split][,x1,y1,x2,y2]' and one row per image"
    text = require_file(path, fmt).decode("utf-8-sig")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip().lower() for h in next(reader, [])]
    if "path" not in header or "label" not in header:
        raise DatasetFormatError(path, f"expected {fmt}; got header {header}", 1)
    col = {h: i for i, h in enumerate(header)}
    box_cols = ["x1", "y1", "x2", "y2"]
    has_box = all(c in col for c in box_cols)
    rows = []
    for lineno, row in enumerate(reader, start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DatasetFormatError(path, f"expected {len(header)} fields ({','.join(header)}), "
                                           f"got {len(row)}", lineno)
        cell = {h: row[i].strip() for h, i in col.items()}
        if not cell["path"] or not cell["label"]:
            raise DatasetFormatError(path, "expected a non-empty path and label", lineno)
        split = cell.get("split") or "train"
        if split not in SPLIT_FOLDERS:
            raise DatasetFormatError(path, f"expected split in {sorted(SPLIT_FOLDERS)}, got {split!r}", lineno)
        bbox = None
        if has_box and any(cell[c] for c in box_cols):
            try:
                bbox = tuple(float(cell[c]) for c in box_cols)
            except ValueError:
                raise DatasetFormatError(path, "expected numeric x1,y1,x2,y2 (or all empty)", lineno) from None
        rows.append((cell["path"].replace("\\", "/"), cell["label"], SPLIT_FOLDERS[split], bbox))
    if not rows:
        raise DatasetFormatError(path, f"no rows; expected {fmt}")

    names = {r[1] for r in rows}
    numeric = all(n.lstrip("-").isdigit() for n in names)
    classes = sorted(names, key=(lambda n: int(n)) if numeric else None)
    label_of = {c: i for i, c in enumerate(classes)}
    records = []
    for rel, name, split, bbox in rows:
        absolute = is_uri(rel) or rel.startswith("/")
        records.append(
            Record(
                path=rel if absolute else join(base, *rel.split("/")),
                image_id=f"csv/{rel if absolute else posixpath.normpath(rel)}",
                label=label_of[name],
                class_name=name,
                split=split,
                bbox=bbox,
            )
        )
    return records
