"""Stanford Dogs (120 breeds).

Files: ``lists/train_list.mat`` and ``lists/test_list.mat`` with ``file_list`` (N x 1 cell,
``n02085620-Chihuahua/n02085620_5927.jpg``), ``annotation_list`` (N x 1 cell, the same
without ``.jpg``) and ``labels`` (N x 1, 1..120); images in ``Images/<file>``; boxes in
``Annotation/<annotation>`` (PASCAL VOC XML, no extension, 1-based pixels). An image with
several dogs gets the box enclosing all of them. Class name: the folder name after the
WordNet id (``Chihuahua``).
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from fgray.data.sources.readers import register_reader
from fgray.data.sources.readers.common import (
    DatasetFormatError,
    as_int,
    as_str,
    box_from_1based,
    find_root,
    join,
    load_mat,
    mat_vector,
    read_many,
)
from fgray.data.schema import Record

_XML = "a PASCAL VOC XML annotation with <object><bndbox><xmin>..</ymax></bndbox></object>"


def parse_voc_box(data: bytes, path: str):
    """The box enclosing every ``<object><bndbox>`` of a VOC file, or None when it has none."""
    try:
        tree = ET.fromstring(data)
    except ET.ParseError as e:
        raise DatasetFormatError(path, f"not valid XML ({e}); expected {_XML}") from None
    boxes = []
    for bb in tree.iter("bndbox"):
        try:
            boxes.append([float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")])
        except (TypeError, ValueError):
            raise DatasetFormatError(path, "expected numeric xmin, ymin, xmax, ymax in every <bndbox>") from None
    if not boxes:
        return None
    return box_from_1based(
        min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)
    )


@register_reader("dogs")
def read_dogs(root: str) -> list[Record]:
    """Root: the folder holding ``Images/``, ``Annotation/`` and ``lists/``."""
    root = find_root(root, "lists/train_list.mat", ["stanford_dogs", "StanfordDogs"])
    entries = []  # (split, file, annotation, class id, list path)
    for split in ("train", "test"):
        path = join(root, "lists", f"{split}_list.mat")
        mat = load_mat(path, ["file_list", "annotation_list", "labels"], "'file_list', 'annotation_list', 'labels'")
        files, annos, labels = (mat_vector(mat, k, path) for k in ("file_list", "annotation_list", "labels"))
        if not len(files) == len(annos) == len(labels):
            raise DatasetFormatError(path, "expected file_list, annotation_list and labels of equal length")
        for f, a, c in zip(files, annos, labels):
            entries.append((split, as_str(f, path, "file_list entry"), as_str(a, path, "annotation_list entry"),
                            as_int(c, path, "label"), path))

    class_ids = sorted({e[3] for e in entries})
    if class_ids[0] < 1:
        raise DatasetFormatError(entries[0][4], f"expected 1-based labels, got {class_ids[0]}")
    names: dict[int, str] = {}
    for _, f, _, c, _ in entries:
        folder = f.split("/")[0]
        names.setdefault(c, folder.split("-", 1)[1] if "-" in folder else folder)

    xml_paths = [join(root, "Annotation", *a.split("/")) for _, _, a, _, _ in entries]
    xml_data = read_many(xml_paths, _XML)
    records = []
    for (split, f, _, c, _), xml_path, data in zip(entries, xml_paths, xml_data):
        rel = f"Images/{f}"
        records.append(
            Record(
                path=join(root, "Images", *f.split("/")),
                image_id=f"dogs/{rel}",
                label=c - 1,
                class_name=names[c],
                split=split,
                bbox=parse_voc_box(data, xml_path),
            )
        )
    return records
