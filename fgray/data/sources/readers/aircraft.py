"""FGVC-Aircraft 2013b at the *variant* level (100 classes).

Files (below ``data/``): ``variants.txt`` (one variant per line, the official order),
``images_variant_{train,val,test}.txt`` (``<image> <variant>``, variant names contain spaces),
``images_box.txt`` (``<image> <xmin> <ymin> <xmax> <ymax>``, 1-based pixels); images are
``data/images/<image>.jpg``. Official training set = train + val ("trainval") -> ``train``.
"""
from __future__ import annotations

from fgray.data.sources.readers import register_reader
from fgray.data.sources.readers.common import (
    DatasetFormatError,
    box_from_1based,
    find_root,
    join,
    lookup,
    read_lines,
    read_table,
)
from fgray.data.schema import Record

SPLIT_FILES = (("train", "train"), ("val", "train"), ("test", "test"))  # (file suffix, official split)


@register_reader("aircraft")
def read_aircraft(root: str) -> list[Record]:
    """Root: the ``fgvc-aircraft-2013b`` folder (holding ``data/``), or the folder holding it."""
    root = find_root(root, "data/variants.txt", ["fgvc-aircraft-2013b"])
    data = join(root, "data")
    f_variants = join(data, "variants.txt")
    variants = [line for _, line in read_lines(f_variants, "one variant name per line")]
    if len(set(variants)) != len(variants):
        raise DatasetFormatError(f_variants, "expected each variant name once")
    label_of = {v: i for i, v in enumerate(variants)}
    f_boxes = join(data, "images_box.txt")
    box_rows = read_table(f_boxes, (str, float, float, float, float), "<image> <xmin> <ymin> <xmax> <ymax>")
    boxes = {r[0]: r[1:] for r in box_rows}

    records = []
    for suffix, split in SPLIT_FILES:
        path = join(data, f"images_variant_{suffix}.txt")
        for image, variant in read_table(path, (str, str), "<image> <variant>", rest=True):
            variant = variant.strip()
            if variant not in label_of:
                raise DatasetFormatError(path, f"variant {variant!r} of image {image} is not in variants.txt")
            rel = f"data/images/{image}.jpg"
            records.append(
                Record(
                    path=join(root, "data", "images", f"{image}.jpg"),
                    image_id=f"aircraft/{rel}",
                    label=label_of[variant],
                    class_name=variant,
                    split=split,
                    bbox=box_from_1based(*lookup(boxes, image, f_boxes, "image")),
                )
            )
    return records
