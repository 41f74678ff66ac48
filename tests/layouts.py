"""Tiny copies of the published dataset layouts, for reader and preparation tests.

Each ``make_<dataset>(tmp_path)`` writes a few real (small, encoded) images and the index
files in the published formats (``.mat`` files via ``scipy.io.savemat`` with the real
variable / field names and shapes, Stanford Dogs' PASCAL VOC XML) and returns a
:class:`Layout` with what a reader must produce: per image id the label, class name,
split and box (x1, y1, x2, y2 in 0-based pixel edges).

    layout = make_cub200(tmp_path)
    records = read_layout(layout.name, layout.root)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = ((64, 48), (48, 64), (80, 60))  # (width, height): landscape, portrait, landscape


@dataclass
class Layout:
    name: str  # reader name
    root: Path
    classes: list[str]  # index = label
    expected: dict[str, dict] = field(default_factory=dict)  # image_id -> {label, class_name, split, bbox, path}

    def add(self, rel: str, label: int, split: str, bbox=None) -> None:
        self.expected[f"{self.name}/{rel}"] = {
            "label": label, "class_name": self.classes[label], "split": split,
            "bbox": None if bbox is None else tuple(float(v) for v in bbox), "path": str(self.root / rel),
        }

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for e in self.expected.values():
            out[e["split"]] = out.get(e["split"], 0) + 1
        return dict(sorted(out.items()))


def write_image(path: Path, size=(64, 48), seed: int = 0, fmt: str | None = None) -> Path:
    """A small real image (noise over a colour, so JPEG has something to encode)."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 255, size=3)
    arr = np.clip(base + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


def corrupt_image(path: Path, kind: str = "garbage") -> Path:
    """Make an image unreadable: random bytes, or a JPEG cut in half."""
    if kind == "garbage":
        path.write_bytes(b"this is not an image" * 20)
    else:
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    return path


def _lines(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(str(v) for v in row) + "\n" for row in rows))


def _cell(strings, shape) -> np.ndarray:
    """A MATLAB cell array of strings, as scipy.io.savemat writes object arrays."""
    arr = np.empty(len(strings), dtype=object)
    for i, s in enumerate(strings):
        arr[i] = np.array([s])
    return arr.reshape(shape)


def _struct(rows: list[dict], fields: list[str]) -> np.ndarray:
    """A 1 x N MATLAB struct array (each field an N-d array as loadmat returns them)."""
    arr = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, row in enumerate(rows):
        arr[0, i] = tuple(row[f] for f in fields)
    return arr


# --------------------------------------------------------------------------- CUB / NABirds


def make_cub200(tmp_path: Path, per_class: int = 2, train_per_class: int = 1, num_classes: int = 3) -> Layout:
    """CUB's files; ``num_classes`` > 3 adds classes 004.Bird_4 ... (200 gives the open split's test half)."""
    root = tmp_path / "CUB_200_2011"
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"][:num_classes]
    classes += [f"{i:03d}.Bird_{i}" for i in range(len(classes) + 1, num_classes + 1)]
    lay = Layout("cub200", root, classes)
    images, labels, split, boxes = [], [], [], []
    n = 0
    for c, name in enumerate(classes):
        for j in range(per_class):
            n += 1
            rel = f"{name}/{name.split('.')[1]}_{j + 1:04d}_{n}.jpg"
            w, h = SIZES[n % len(SIZES)]
            write_image(root / "images" / rel, (w, h), seed=n)
            box = (2.0 + j, 3.0, 20.5, 15.0)  # x y w h
            train = j < train_per_class
            images.append((n, rel)); labels.append((n, c + 1)); split.append((n, int(train)))
            boxes.append((n, *box))
            lay.add(f"images/{rel}", c, "train" if train else "test", (box[0], box[1], box[0] + box[2], box[1] + box[3]))
    _lines(root / "images.txt", images)
    _lines(root / "image_class_labels.txt", labels)
    _lines(root / "train_test_split.txt", split)
    _lines(root / "bounding_boxes.txt", boxes)
    _lines(root / "classes.txt", [(i + 1, c) for i, c in enumerate(classes)])
    return lay


def make_nabirds(tmp_path: Path) -> Layout:
    root = tmp_path / "nabirds"
    # classes.txt holds hierarchy nodes too; only 295, 817 and 1000 label images.
    all_classes = {0: "Birds", 1: "Perching Birds", 22: "Tits and Chickadees", 295: "Oak Titmouse",
                   817: "Black-capped Chickadee", 999: "Unused Leaf", 1000: "American Robin (Adult)"}
    leaves = [295, 817, 1000]
    lay = Layout("nabirds", root, [all_classes[c] for c in leaves])
    images, labels, split, boxes = [], [], [], []
    n = 0
    for c in reversed(leaves):  # file order differs from class order
        for j in range(2):
            n += 1
            uuid = f"{n:08x}-21dc-4d0c-bfe1-4cae3c85c8{c % 100:02d}"
            rel = f"{c:04d}/{uuid.replace('-', '')}.jpg"
            write_image(root / "images" / rel, SIZES[n % 3], seed=100 + n)
            images.append((uuid, rel)); labels.append((uuid, c)); split.append((uuid, 1 - j))
            boxes.append((uuid, 5, 6, 30, 20))
            lay.add(f"images/{rel}", leaves.index(c), "train" if j == 0 else "test", (5, 6, 35, 26))
    _lines(root / "images.txt", images)
    _lines(root / "image_class_labels.txt", labels)
    _lines(root / "train_test_split.txt", split)
    _lines(root / "bounding_boxes.txt", boxes)
    _lines(root / "classes.txt", sorted(all_classes.items()))
    _lines(root / "hierarchy.txt", [(295, 22), (817, 22), (22, 1), (1, 0), (1000, 1), (999, 1)])
    return lay


# --------------------------------------------------------------------------- Stanford Cars


CAR_CLASSES = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]


def _car_ann(box, cls, **extra) -> dict:
    x1, y1, x2, y2 = box
    return {"bbox_x1": np.array([[x1]], dtype=np.uint16), "bbox_y1": np.array([[y1]], dtype=np.uint16),
            "bbox_x2": np.array([[x2]], dtype=np.uint16), "bbox_y2": np.array([[y2]], dtype=np.uint16),
            "class": np.array([[cls]], dtype=np.uint8), **extra}


def make_cars196(tmp_path: Path, layout: str = "devkit") -> Layout:
    """``layout="devkit"``: devkit/*.mat + cars_test_annos_withlabels.mat; ``"annos"``: cars_annos.mat."""
    from scipy.io import savemat

    root = tmp_path / "stanford_cars"
    lay = Layout("cars196", root, list(CAR_CLASSES))
    box = (3, 4, 40, 30)  # 1-based inclusive -> (2, 3, 40, 30)
    if layout == "devkit":
        for split, folder, mat in (("train", "cars_train", root / "devkit" / "cars_train_annos.mat"),
                                   ("test", "cars_test", root / "cars_test_annos_withlabels.mat")):
            rows = []
            for i in range(6):
                fname = f"{i + 1:05d}.jpg"
                cls = i % 3 + 1
                write_image(root / folder / fname, SIZES[i % 3], seed=200 + i + (10 if split == "test" else 0))
                rows.append(_car_ann(box, cls, fname=np.array([fname])))
                lay.add(f"{folder}/{fname}", cls - 1, split, (2, 3, 40, 30))
            mat.parent.mkdir(parents=True, exist_ok=True)
            savemat(mat, {"annotations": _struct(rows, ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"])})
        savemat(root / "devkit" / "cars_meta.mat", {"class_names": _cell(CAR_CLASSES, (1, len(CAR_CLASSES)))})
        # the unlabelled test annotations ship in the devkit too; the reader must not use them
        savemat(root / "devkit" / "cars_test_annos.mat", {"annotations": _struct(
            [{k: v for k, v in _car_ann(box, 1, fname=np.array(["00001.jpg"])).items() if k != "class"}],
            ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "fname"])})
    else:
        rows = []
        for i in range(9):
            rel = f"car_ims/{i + 1:06d}.jpg"
            cls, test = i % 3 + 1, int(i >= 6)
            write_image(root / rel, SIZES[i % 3], seed=300 + i)
            rows.append(_car_ann(box, cls, relative_im_path=np.array([rel]), test=np.array([[test]], dtype=np.uint8)))
            lay.add(rel, cls - 1, "test" if test else "train", (2, 3, 40, 30))
        fields = ["relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test"]
        root.mkdir(parents=True, exist_ok=True)
        savemat(root / "cars_annos.mat", {"annotations": _struct(rows, fields),
                                          "class_names": _cell(CAR_CLASSES, (1, len(CAR_CLASSES)))})
    return lay


# --------------------------------------------------------------------------- FGVC-Aircraft


def make_aircraft(tmp_path: Path) -> Layout:
    root = tmp_path / "fgvc-aircraft-2013b"
    data = root / "data"
    variants = ["707-320", "A300B4", "Cessna 172"]
    lay = Layout("aircraft", root, variants)
    split_rows = {"train": [], "val": [], "test": []}
    boxes = []
    n = 0
    for v, variant in enumerate(variants):
        for suffix in ("train", "val", "test"):
            n += 1
            image = f"{34300 + n:07d}"  # leading zeros, as in the release
            write_image(data / "images" / f"{image}.jpg", SIZES[n % 3], seed=400 + n)
            split_rows[suffix].append((image, variant))
            boxes.append((image, 5, 6, 40, 30))  # 1-based inclusive
            lay.add(f"data/images/{image}.jpg", v, "test" if suffix == "test" else "train", (4, 5, 40, 30))
    _lines(data / "variants.txt", [(v,) for v in variants])
    for suffix, rows in split_rows.items():
        _lines(data / f"images_variant_{suffix}.txt", rows)
    _lines(data / "images_box.txt", boxes)
    return lay


# --------------------------------------------------------------------------- Stanford Dogs

DOG_FOLDERS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02086240-Shih-Tzu"]


def _voc_xml(filename: str, size, boxes) -> str:
    objects = "".join(
        f"<object><name>dog</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for b in boxes
    )
    return (f"<annotation><folder>{filename.split('_')[0][1:]}</folder><filename>{filename}</filename>"
            f"<source><database>ImageNet database</database></source>"
            f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"<segment>0</segment>{objects}</annotation>")


def make_dogs(tmp_path: Path) -> Layout:
    from scipy.io import savemat

    root = tmp_path / "stanford_dogs"
    lay = Layout("dogs", root, [f.split("-", 1)[1] for f in DOG_FOLDERS])
    lists = {"train": [], "test": []}
    n = 0
    for c, folder in enumerate(DOG_FOLDERS):
        wnid = folder.split("-")[0]
        for j, split in enumerate(("train", "test")):
            n += 1
            stem = f"{wnid}_{1000 + n}"
            size = SIZES[n % 3]
            write_image(root / "Images" / folder / f"{stem}.jpg", size, seed=500 + n)
            boxes = [(3, 4, 30, 25)] if n != 2 else [(3, 4, 30, 25), (10, 2, 40, 20)]  # image 2: two dogs
            (root / "Annotation" / folder).mkdir(parents=True, exist_ok=True)
            (root / "Annotation" / folder / stem).write_text(_voc_xml(stem, size, boxes))
            lists[split].append((f"{folder}/{stem}.jpg", f"{folder}/{stem}", c + 1))
            union = (min(b[0] for b in boxes) - 1, min(b[1] for b in boxes) - 1,
                     max(b[2] for b in boxes), max(b[3] for b in boxes))
            lay.add(f"Images/{folder}/{stem}.jpg", c, split, union)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    for split, rows in lists.items():
        savemat(root / "lists" / f"{split}_list.mat", {
            "file_list": _cell([r[0] for r in rows], (len(rows), 1)),
            "annotation_list": _cell([r[1] for r in rows], (len(rows), 1)),
            "labels": np.array([[r[2]] for r in rows], dtype=np.float64),
        })
    return lay


# --------------------------------------------------------------------------- Flowers-102


def make_flowers102(tmp_path: Path) -> Layout:
    from scipy.io import savemat

    root = tmp_path / "flowers102"
    lay = Layout("flowers102", root, [f"flower_{k:03d}" for k in (1, 2, 3)])
    labels = [1, 2, 3, 1, 2, 3, 1, 2, 3]  # image i (1-based) has class labels[i-1]
    setid = {"trnid": [1, 2, 3], "valid": [4, 5, 6], "tstid": [7, 8, 9]}
    for i, cls in enumerate(labels, start=1):
        write_image(root / "jpg" / f"image_{i:05d}.jpg", SIZES[i % 3], seed=600 + i)
        lay.add(f"jpg/image_{i:05d}.jpg", cls - 1, "test" if i in setid["tstid"] else "train")
    savemat(root / "imagelabels.mat", {"labels": np.array([labels], dtype=np.float64)})
    savemat(root / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in setid.items()})
    return lay


# --------------------------------------------------------------------------- SOP / In-Shop


def make_sop(tmp_path: Path) -> Layout:
    root = tmp_path / "Stanford_Online_Products"
    products = [(1, 1, "bicycle_final", "111085122871"), (2, 1, "bicycle_final", "111265328556"),
                (3, 2, "chair_final", "111182689872"), (4, 2, "chair_final", "111196295614")]
    lay = Layout("sop", root, [f"{p[2]}/{p[0]}" for p in products])
    rows = {"train": [], "test": []}
    n = 0
    for class_id, super_id, folder, product in products:
        split = "train" if class_id <= 2 else "test"
        for j in range(2):
            n += 1
            rel = f"{folder}/{product}_{j}.JPG"
            write_image(root / rel, SIZES[n % 3], seed=700 + n, fmt="JPEG")
            rows[split].append((n, class_id, super_id, rel))
            lay.add(rel, class_id - 1, split)
    for split, table in rows.items():
        _lines(root / f"Ebay_{split}.txt", [("image_id", "class_id", "super_class_id", "path"), *table])
    return lay


def make_inshop(tmp_path: Path, release_layout: bool = True) -> Layout:
    """``release_layout``: ``Eval/``, ``Anno/``, ``Img/img/...``; else the files flat in the root."""
    root = tmp_path / "inshop"
    items = ["id_00000001", "id_00000002", "id_00000007"]
    lay = Layout("inshop", root, items)
    img_base = root / "Img" if release_layout else root
    prefix = "Img/" if release_layout else ""
    part, boxes = [], []
    n = 0
    for k, item in enumerate(items):
        statuses = ["train", "train"] if k == 0 else ["query", "gallery"]
        for j, status in enumerate(statuses):
            n += 1
            name = f"img/WOMEN/Dresses/{item}/0{j + 1}_{j + 1}_front.jpg"
            write_image(img_base / name, SIZES[n % 3], seed=800 + n)
            part.append((name, item, status))
            boxes.append((name, 1, 1, 4, 5, 30, 40))
            lay.add(prefix + name, k, status, (4, 5, 30, 40))
    eval_dir = root / "Eval" if release_layout else root
    anno_dir = root / "Anno" if release_layout else root
    _lines(eval_dir / "list_eval_partition.txt", [(len(part),), ("image_name", "item_id", "evaluation_status"), *part])
    _lines(anno_dir / "list_bbox_inshop.txt",
           [(len(boxes),), ("image_name", "clothes_type", "pose_type", "x_1", "y_1", "x_2", "y_2"), *boxes])
    return lay


# --------------------------------------------------------------------------- ImageFolder / CSV


def make_imagefolder(tmp_path: Path, splits: bool = True) -> Layout:
    root = tmp_path / "folder"
    classes = ["cat", "dog", "emu"]
    lay = Layout("imagefolder", root, classes)
    n = 0
    for split in ("train", "test") if splits else (None,):
        for c, name in enumerate(classes):
            for j in range(2):
                n += 1
                rel = f"{split}/{name}/{j}.png" if split else f"{name}/{j}.png"
                write_image(root / rel, SIZES[n % 3], seed=900 + n)
                lay.add(rel, c, split or "train")
    (root / "README.txt").write_text("not an image\n")
    if splits:
        (root / "train" / "notes.txt").write_text("files directly in a split folder are ignored\n")
    return lay


def make_csv(tmp_path: Path) -> Layout:
    root = tmp_path / "csvdata"
    classes = ["2", "10", "33"]  # integer labels sort numerically
    lay = Layout("csv", root, classes)
    lines = ["path,label,split,x1,y1,x2,y2"]
    n = 0
    for c, name in enumerate(classes):
        for split in ("train", "test"):
            n += 1
            rel = f"imgs/{name}/{n}.jpg"
            write_image(root / rel, SIZES[n % 3], seed=1000 + n)
            box = (1.5, 2.0, 20.0, 30.0) if n % 2 else None
            lines.append(f"{rel},{name},{split}," + (",".join(str(v) for v in box) if box else ",,,"))
            lay.add(rel, c, split, box)
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return lay


BUILDERS = {
    "cub200": make_cub200,
    "nabirds": make_nabirds,
    "cars196": make_cars196,
    "aircraft": make_aircraft,
    "dogs": make_dogs,
    "flowers102": make_flowers102,
    "sop": make_sop,
    "inshop": make_inshop,
    "imagefolder": make_imagefolder,
    "csv": make_csv,
}
