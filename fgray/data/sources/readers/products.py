"""Stanford Online Products (SOP) and DeepFashion In-Shop Clothes Retrieval.

SOP (``Stanford_Online_Products/``): ``Ebay_train.txt`` / ``Ebay_test.txt`` with the header
``image_id class_id super_class_id path``; one product = one class (ids 1..22634, train and
test classes disjoint). Class name: ``<super-class folder>/<class_id>``. No boxes.

In-Shop: ``list_eval_partition.txt`` (in the root or ``Eval/``): line 1 the number of
images, line 2 the header ``image_name item_id evaluation_status``, then
``img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train|query|gallery``.
One item = one class, ordered by item id. Boxes, when ``list_bbox_inshop.txt`` (root or
``Anno/``) is present: same two header lines, then
``image_name clothes_type pose_type x_1 y_1 x_2 y_2``. Image paths are relative to the root,
or to ``Img/`` in the official release layout (``Img/img/WOMEN/...``).
"""
from __future__ import annotations

from fgray.data.sources.readers import register_reader
from fgray.data.sources.readers.common import (
    DatasetFormatError,
    dense_labels,
    exists,
    find_root,
    join,
    read_lines,
    read_table,
)
from fgray.data.schema import Record


@register_reader("sop")
def read_sop(root: str) -> list[Record]:
    root = find_root(root, "Ebay_train.txt", ["Stanford_Online_Products"])
    rows = []
    for split in ("train", "test"):
        path = join(root, f"Ebay_{split}.txt")
        fmt = "<image_id> <class_id> <super_class_id> <path>"
        lines = read_lines(path, f"the header 'image_id class_id super_class_id path' and lines '{fmt}'")
        if not lines or lines[0][1].split()[:2] != ["image_id", "class_id"]:
            raise DatasetFormatError(path, "expected the header line 'image_id class_id super_class_id path'", 1)
        table = read_table(path, (int, int, int, str), fmt, rest=True, lines=lines[1:])
        rows += [(split, class_id, rel.strip().lstrip("/")) for _, class_id, _, rel in table]
    label_of = dense_labels(c for _, c, _ in rows)
    return [
        Record(
            path=join(root, *rel.split("/")),
            image_id=f"sop/{rel}",
            label=label_of[class_id],
            class_name=f"{rel.split('/')[0]}/{class_id}",
            split=split,
            bbox=None,
        )
        for split, class_id, rel in rows
    ]


def _read_counted_table(path: str, header: list[str], types, fmt: str) -> list[tuple]:
    """DeepFashion list files: a count line, a header line, then the table."""
    lines = read_lines(path, f"a count line, the header '{' '.join(header)}', then lines '{fmt}'")
    if len(lines) < 2 or lines[0][0] != 1 or lines[1][0] != 2:
        raise DatasetFormatError(path, f"expected a count line and the header '{' '.join(header)}' on lines 1-2")
    try:
        count = int(lines[0][1])
    except ValueError:
        raise DatasetFormatError(path, f"expected the number of images, got {lines[0][1]!r}", 1) from None
    if lines[1][1].split() != header:
        raise DatasetFormatError(path, f"expected the header '{' '.join(header)}', got {lines[1][1]!r}", 2)
    rows = read_table(path, types, fmt, lines=lines[2:])
    if len(rows) != count:
        raise DatasetFormatError(path, f"line 1 announces {count} images, the file lists {len(rows)}")
    return rows


@register_reader("inshop")
def read_inshop(root: str) -> list[Record]:
    root = find_root(root, "Eval/list_eval_partition.txt", ["In-shop Clothes Retrieval Benchmark", "inshop", "InShop"])
    part = join(root, "Eval", "list_eval_partition.txt")
    if not exists(part):
        part = join(root, "list_eval_partition.txt")
    rows = _read_counted_table(
        part, ["image_name", "item_id", "evaluation_status"], (str, str, str),
        "<image_name> <item_id> <evaluation_status>"
    )
    for name, _, status in rows:
        if status not in ("train", "query", "gallery"):
            raise DatasetFormatError(part, "expected evaluation_status train, query or gallery, "
                                           f"got {status!r} for {name}")

    boxes = {}
    for box_path in (join(root, "Anno", "list_bbox_inshop.txt"), join(root, "list_bbox_inshop.txt")):
        if exists(box_path):
            header = ["image_name", "clothes_type", "pose_type", "x_1", "y_1", "x_2", "y_2"]
            table = _read_counted_table(
                box_path, header, (str, int, int, float, float, float, float),
                "<image_name> <clothes_type> <pose_type> <x_1> <y_1> <x_2> <y_2>",
            )
            boxes = {r[0]: tuple(r[3:]) for r in table}
            break

    base = join(root, "Img") if exists(join(root, "Img", "img")) else root
    prefix = "Img/" if base != root else ""
    label_of = dense_labels(item for _, item, _ in rows)
    return [
        Record(
            path=join(base, *name.split("/")),
            image_id=f"inshop/{prefix}{name}",
            label=label_of[item],
            class_name=item,
            split=status,
            bbox=boxes.get(name),
        )
        for name, item, status in rows
    ]
