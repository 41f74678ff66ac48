"""Oxford Flowers-102.

Files: ``imagelabels.mat`` (``labels``: 1 x 8189, classes 1..102, entry i is image i),
``setid.mat`` (``trnid``, ``valid``, ``tstid``: 1-based image indices), images
``jpg/image_00001.jpg``. Official training set = trnid + valid -> ``train``; tstid -> ``test``.
The dataset ships no class names: classes are named ``flower_001`` .. ``flower_102``.
"""
from __future__ import annotations

from fgray.data.sources.readers import register_reader
from fgray.data.sources.readers.common import (
    DatasetFormatError,
    as_int,
    find_root,
    join,
    load_mat,
    mat_vector,
)
from fgray.data.schema import Record

SPLITS = (("trnid", "train"), ("valid", "train"), ("tstid", "test"))


@register_reader("flowers102")
def read_flowers102(root: str) -> list[Record]:
    """Root: the folder holding ``jpg/``, ``imagelabels.mat`` and ``setid.mat``."""
    root = find_root(root, "imagelabels.mat", ["flowers102", "flowers-102", "102flowers"])
    f_labels = join(root, "imagelabels.mat")
    f_setid = join(root, "setid.mat")
    label_mat = load_mat(f_labels, ["labels"], "'labels' (1 x N, classes 1..102)")
    labels = [as_int(v, f_labels, "label") for v in mat_vector(label_mat, "labels", f_labels)]
    setid = load_mat(f_setid, [k for k, _ in SPLITS], "'trnid', 'valid', 'tstid' (1-based image indices)")
    records = []
    seen: dict[int, str] = {}
    for key, split in SPLITS:
        for v in mat_vector(setid, key, f_setid):
            idx = as_int(v, f_setid, f"{key} index")
            if not 1 <= idx <= len(labels):
                raise DatasetFormatError(f_setid, f"{key}: expected image indices in 1..{len(labels)} "
                                                  f"(imagelabels.mat), got {idx}")
            if idx in seen:
                raise DatasetFormatError(f_setid, f"image {idx} is listed in both {seen[idx]} and {key}")
            seen[idx] = key
            cls = labels[idx - 1]
            if cls < 1:
                raise DatasetFormatError(f_labels, f"expected 1-based classes, got {cls} for image {idx}")
            rel = f"jpg/image_{idx:05d}.jpg"
            records.append(
                Record(
                    path=join(root, "jpg", f"image_{idx:05d}.jpg"),
                    image_id=f"flowers102/{rel}",
                    label=cls - 1,
                    class_name=f"flower_{cls:03d}",
                    split=split,
                    bbox=None,
                )
            )
    return records
