"""Stanford Cars (Cars196), in either of its two published layouts.

Devkit layout (``car_devkit.tgz`` + ``cars_train.tgz`` + ``cars_test.tgz`` + the test labels):

- ``devkit/cars_meta.mat``: ``class_names`` (1 x 196 cell);
- ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` (in the root or in
  ``devkit/``): struct array ``annotations`` with fields ``bbox_x1 bbox_y1 bbox_x2 bbox_y2
  class fname``; images in ``cars_train/<fname>`` and ``cars_test/<fname>``.

Single-file layout (``car_ims.tgz`` + ``cars_annos.mat``): ``annotations`` with fields
``relative_im_path bbox_x1 bbox_y1 bbox_x2 bbox_y2 class test`` and ``class_names``.

Classes are 1-based (label = class - 1); boxes are MATLAB 1-based inclusive pixel indices.
"""
from __future__ import annotations

from fgray.data.sources.readers import register_reader
from fgray.data.sources.readers.common import (
    DatasetFormatError,
    as_int,
    as_str,
    box_from_1based,
    exists,
    find_root,
    join,
    load_mat,
    mat_struct,
    mat_vector,
)
from fgray.data.schema import Record

_BOX = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def _class_names(path: str, mat: dict) -> list[str]:
    return [as_str(n, path, "class name") for n in mat_vector(mat, "class_names", path)]


def _records(root, path, ann, names, split_of, rel_of) -> list[Record]:
    out = []
    for i in range(len(ann["class"])):
        cls = as_int(ann["class"][i], path, "class")
        if not 1 <= cls <= len(names):
            raise DatasetFormatError(path, f"annotation {i + 1}: expected class in 1..{len(names)}, got {cls}")
        rel = rel_of(i)
        out.append(
            Record(
                path=join(root, *rel.split("/")),
                image_id=f"cars196/{rel}",
                label=cls - 1,
                class_name=names[cls - 1],
                split=split_of(i),
                bbox=box_from_1based(*(float(ann[k][i]) for k in _BOX)),
            )
        )
    return out


def _read_single(root: str) -> list[Record]:
    path = join(root, "cars_annos.mat")
    what = "'annotations' (relative_im_path, bbox_x1..bbox_y2, class, test) and 'class_names'"
    mat = load_mat(path, ["annotations", "class_names"], what)
    names = _class_names(path, mat)
    ann = mat_struct(mat, "annotations", ("relative_im_path", *_BOX, "class", "test"), path)
    return _records(
        root, path, ann, names,
        split_of=lambda i: "test" if as_int(ann["test"][i], path, "test flag") else "train",
        rel_of=lambda i: as_str(ann["relative_im_path"][i], path, "relative_im_path").lstrip("/"),
    )


def _read_devkit(root: str) -> list[Record]:
    meta = join(root, "devkit", "cars_meta.mat")
    names = _class_names(meta, load_mat(meta, ["class_names"], "'class_names' (the devkit's class list)"))
    test_path = join(root, "cars_test_annos_withlabels.mat")
    if not exists(test_path) and exists(join(root, "devkit", "cars_test_annos_withlabels.mat")):
        test_path = join(root, "devkit", "cars_test_annos_withlabels.mat")
    records = []
    for split, path, folder in (
        ("train", join(root, "devkit", "cars_train_annos.mat"), "cars_train"),
        ("test", test_path, "cars_test"),
    ):
        what = "'annotations' with fields bbox_x1, bbox_y1, bbox_x2, bbox_y2, class, fname"
        if split == "test":
            what += " (the test labels, distributed separately from devkit/cars_test_annos.mat)"
        ann = mat_struct(load_mat(path, ["annotations"], what), "annotations", (*_BOX, "class", "fname"), path)
        records += _records(
            root, path, ann, names,
            split_of=lambda i, s=split: s,
            rel_of=lambda i, f=folder, p=path, a=ann: f"{f}/{as_str(a['fname'][i], p, 'fname')}",
        )
    return records


@register_reader("cars196")
def read_cars196(root: str) -> list[Record]:
    """Stanford Cars: ``cars_annos.mat`` if present, else the devkit layout."""
    single = find_root(root, "cars_annos.mat", ["stanford_cars", "cars"])
    if exists(join(single, "cars_annos.mat")):
        return _read_single(single)
    return _read_devkit(find_root(root, "devkit/cars_meta.mat", ["stanford_cars", "cars"]))
