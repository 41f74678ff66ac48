"""CUB-200-2011 and NABirds: the same family of whitespace index files.

Files (in the root, next to ``images/``):

- ``images.txt``             ``<image_id> <path below images/>``
- ``image_class_labels.txt`` ``<image_id> <class_id>``
- ``train_test_split.txt``   ``<image_id> <is_training_image>`` (1 train, 0 test)
- ``bounding_boxes.txt``     ``<image_id> <x> <y> <width> <height>`` (pixels)
- ``classes.txt``            ``<class_id> <class name>`` (NABirds names contain spaces)

CUB's class ids are 1..200 and every one is a class. NABirds' ``classes.txt`` also lists
the inner nodes of its hierarchy (``hierarchy.txt``): only the ids that label images are
classes, ordered by id.
"""
from __future__ import annotations

from fgray.data.sources.readers import register_reader
from fgray.data.sources.readers.common import (
    DatasetFormatError,
    box_from_xywh,
    find_root,
    join,
    lookup,
    read_table,
)
from fgray.data.schema import Record


def _read(dataset: str, root: str, all_classes_are_labels: bool) -> list[Record]:
    f_images = join(root, "images.txt")
    f_labels = join(root, "image_class_labels.txt")
    f_split = join(root, "train_test_split.txt")
    f_boxes = join(root, "bounding_boxes.txt")
    f_classes = join(root, "classes.txt")

    images = read_table(f_images, (str, str), "<image_id> <image path>", rest=True)
    labels = dict(read_table(f_labels, (str, int), "<image_id> <class_id>"))
    is_train = dict(read_table(f_split, (str, int), "<image_id> <is_training_image 0|1>"))
    box_rows = read_table(f_boxes, (str, float, float, float, float), "<image_id> <x> <y> <width> <height>")
    boxes = {r[0]: r[1:] for r in box_rows}
    names = dict(read_table(f_classes, (int, str), "<class_id> <class name>", rest=True))

    if all_classes_are_labels:
        class_ids = sorted(names)
    else:  # NABirds: hierarchy nodes without images are not classes
        class_ids = sorted({lookup(labels, image_id, f_labels, "image") for image_id, _ in images})
    label_of = {cid: i for i, cid in enumerate(class_ids)}

    records = []
    for image_id, rel in images:
        class_id = lookup(labels, image_id, f_labels, "image")
        if class_id not in names:
            raise DatasetFormatError(f_classes, f"no entry for class {class_id} "
                                                f"(used by image {image_id} in image_class_labels.txt)")
        flag = lookup(is_train, image_id, f_split, "image")
        if flag not in (0, 1):
            raise DatasetFormatError(f_split, f"expected is_training_image 0 or 1 for image {image_id}, got {flag}")
        rel_path = "images/" + rel.strip().lstrip("/")
        records.append(
            Record(
                path=join(root, *rel_path.split("/")),
                image_id=f"{dataset}/{rel_path}",
                label=label_of[class_id],
                class_name=names[class_id],
                split="train" if flag == 1 else "test",
                bbox=box_from_xywh(*lookup(boxes, image_id, f_boxes, "image")),
            )
        )
    return records


@register_reader("cub200")
def read_cub200(root: str) -> list[Record]:
    """CUB-200-2011 (root: the ``CUB_200_2011`` folder, or the folder holding it)."""
    return _read("cub200", find_root(root, "images.txt", ["CUB_200_2011"]), all_classes_are_labels=True)


@register_reader("nabirds")
def read_nabirds(root: str) -> list[Record]:
    """NABirds (root: the ``nabirds`` folder, or the folder holding it)."""
    return _read("nabirds", find_root(root, "images.txt", ["nabirds"]), all_classes_are_labels=False)
