"""Dataset layout readers: tiny copies of every published layout (tests/layouts.py)."""
from __future__ import annotations

import pytest

from fgray.data.protocols import DATASETS
from fgray.data.sources.readers import READERS, DatasetFormatError, class_names, read_layout
from layouts import BUILDERS, make_aircraft, make_cars196, make_csv, make_cub200, make_dogs, make_flowers102
from layouts import make_imagefolder, make_inshop, make_nabirds, make_sop


def _as_dict(records):
    return {
        r.image_id: {"label": r.label, "class_name": r.class_name, "split": r.split, "bbox": r.bbox, "path": r.path}
        for r in records
    }


def test_registry_names_match_protocols():
    assert set(READERS) == set(DATASETS) - {"synthetic"}


@pytest.mark.parametrize(
    "name, build",
    [
        *BUILDERS.items(),
        ("cars196 (cars_annos.mat)", lambda p: make_cars196(p, layout="annos")),
        ("inshop (flat)", lambda p: make_inshop(p, release_layout=False)),
        ("imagefolder (no splits)", lambda p: make_imagefolder(p, splits=False)),
    ],
)
def test_reader_matches_layout(tmp_path, name, build):
    layout = build(tmp_path)
    records = read_layout(layout.name, str(layout.root))
    assert _as_dict(records) == layout.expected
    assert class_names(records) == layout.classes
    assert all(r.image_id.startswith(f"{layout.name}/") for r in records)
    assert all(isinstance(r.label, int) and isinstance(r.split, str) for r in records)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_reader_reads_uris_through_pyarrow_fs(tmp_path, name):
    """``file://`` goes through the same pyarrow-filesystem code as ``s3://``."""
    layout = BUILDERS[name](tmp_path)
    uri = f"file://{layout.root}"
    records = read_layout(name, uri)
    expected = {k: {**v, "path": uri + v["path"][len(str(layout.root)):]} for k, v in layout.expected.items()}
    assert _as_dict(records) == expected


def test_reader_accepts_the_parent_folder(tmp_path):
    layout = make_cub200(tmp_path)  # root is tmp_path/CUB_200_2011
    records = read_layout("cub200", str(tmp_path))
    assert _as_dict(records) == layout.expected


# ---------------------------------------------------------------- facts spelled out per dataset


def test_cub_labels_are_zero_based_in_class_order_and_boxes_xywh(tmp_path):
    layout = make_cub200(tmp_path)
    recs = {r.image_id: r for r in read_layout("cub200", str(layout.root))}
    first = recs["cub200/images/001.Black_footed_Albatross/Black_footed_Albatross_0001_1.jpg"]
    assert (first.label, first.class_name, first.split) == (0, "001.Black_footed_Albatross", "train")
    assert first.bbox == (2.0, 3.0, 22.5, 18.0)  # x y w h = 2 3 20.5 15
    assert first.path == str(layout.root / "images/001.Black_footed_Albatross/Black_footed_Albatross_0001_1.jpg")
    assert {r.split for r in recs.values()} == {"train", "test"}


def test_nabirds_classes_are_only_the_nodes_with_images(tmp_path):
    layout = make_nabirds(tmp_path)
    records = read_layout("nabirds", str(layout.root))
    assert class_names(records) == ["Oak Titmouse", "Black-capped Chickadee", "American Robin (Adult)"]
    assert sorted({r.label for r in records}) == [0, 1, 2]


def test_cars_boxes_are_converted_from_1_based(tmp_path):
    layout = make_cars196(tmp_path)
    records = read_layout("cars196", str(layout.root))
    assert {r.bbox for r in records} == {(2.0, 3.0, 40.0, 30.0)}  # 1-based 3 4 40 30
    assert sum(r.split == "test" for r in records) == 6
    assert {r.class_name for r in records if r.label == 0} == {"AM General Hummer SUV 2000"}
    assert any(r.image_id == "cars196/cars_test/00001.jpg" for r in records)


def test_aircraft_trainval_is_train_and_variants_keep_their_order(tmp_path):
    layout = make_aircraft(tmp_path)
    records = read_layout("aircraft", str(layout.root))
    assert class_names(records) == ["707-320", "A300B4", "Cessna 172"]
    assert sum(r.split == "train" for r in records) == 6 and sum(r.split == "test" for r in records) == 3
    assert {r.bbox for r in records} == {(4.0, 5.0, 40.0, 30.0)}
    assert any(r.image_id == "aircraft/data/images/0034301.jpg" for r in records)


def test_dogs_union_box_and_class_names(tmp_path):
    layout = make_dogs(tmp_path)
    records = read_layout("dogs", str(layout.root))
    assert class_names(records) == ["Chihuahua", "Japanese_spaniel", "Shih-Tzu"]
    two_dogs = [r for r in records if r.image_id.endswith("_1002.jpg")]
    assert two_dogs[0].bbox == (2.0, 1.0, 40.0, 25.0)


def test_flowers_trnid_and_valid_are_train(tmp_path):
    layout = make_flowers102(tmp_path)
    records = read_layout("flowers102", str(layout.root))
    assert sum(r.split == "train" for r in records) == 6
    assert all(r.bbox is None for r in records)
    assert {r.image_id: r.label for r in records}["flowers102/jpg/image_00005.jpg"] == 1


def test_sop_and_inshop_class_splits(tmp_path):
    sop = read_layout("sop", str(make_sop(tmp_path / "s").root))
    assert {r.label for r in sop if r.split == "train"} == {0, 1}
    assert {r.label for r in sop if r.split == "test"} == {2, 3}
    inshop = read_layout("inshop", str(make_inshop(tmp_path / "i").root))
    assert {r.split for r in inshop} == {"train", "query", "gallery"}
    assert class_names(inshop) == ["id_00000001", "id_00000002", "id_00000007"]
    assert inshop[0].image_id.startswith("inshop/Img/img/WOMEN/")


def test_csv_numeric_labels_sort_numerically(tmp_path):
    layout = make_csv(tmp_path)
    records = read_layout("csv", str(layout.root / "labels.csv"))  # the file itself works too
    assert class_names(records) == ["2", "10", "33"]


# ---------------------------------------------------------------- one-line errors


def _error(name, root) -> str:
    with pytest.raises(DatasetFormatError) as exc:
        read_layout(name, str(root))
    message = str(exc.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "name, build, remove, expected",
    [
        ("cub200", make_cub200, "train_test_split.txt", "missing; expected"),
        ("nabirds", make_nabirds, "bounding_boxes.txt", "missing; expected"),
        ("cars196", make_cars196, "cars_test_annos_withlabels.mat", "test labels"),
        ("aircraft", make_aircraft, "data/images_box.txt", "missing; expected"),
        ("dogs", make_dogs, "lists/test_list.mat", "missing; expected"),
        ("flowers102", make_flowers102, "setid.mat", "trnid"),
        ("sop", make_sop, "Ebay_test.txt", "missing; expected"),
        ("inshop", make_inshop, "Eval/list_eval_partition.txt", "missing; expected"),
    ],
)
def test_missing_file_is_one_line_naming_it(tmp_path, name, build, remove, expected):
    layout = build(tmp_path)
    (layout.root / remove).unlink()
    message = _error(name, layout.root)
    assert message.startswith(str(layout.root / remove.split("/")[-1]) if name == "inshop" else str(layout.root / remove))
    assert expected in message


def test_missing_root_and_unknown_dataset(tmp_path):
    assert "no such file or folder" in _error("cub200", tmp_path / "nope")
    with pytest.raises(KeyError, match="unknown dataset"):
        read_layout("imagenet", str(tmp_path))


def test_malformed_line_names_file_and_line(tmp_path):
    layout = make_cub200(tmp_path)
    path = layout.root / "image_class_labels.txt"
    lines = path.read_text().splitlines()
    lines[2] = "3 three"
    path.write_text("\n".join(lines) + "\n")
    message = _error("cub200", layout.root)
    assert message.startswith(f"{path}:3: expected '<image_id> <class_id>'")
    assert "'3 three'" in message


@pytest.mark.parametrize(
    "name, build, file, content, expected",
    [
        ("aircraft", make_aircraft, "data/images_variant_test.txt", "0034399 Boeing 999\n", "not in variants.txt"),
        ("sop", make_sop, "Ebay_train.txt", "1 1 1 bicycle_final/x.JPG\n", "header line"),
        ("inshop", make_inshop, "Eval/list_eval_partition.txt",
         "1\nimage_name item_id evaluation_status\nimg/a.jpg id_1 holdout\n", "evaluation_status"),
        ("flowers102", make_flowers102, "imagelabels.mat", "not a mat file", "not a readable .mat"),
        ("dogs", make_dogs, "Annotation/n02085620-Chihuahua/n02085620_1001", "<annotation><object>", "not valid XML"),
        ("csv", make_csv, "labels.csv", "file,class\na.jpg,1\n", "header"),
        ("imagefolder", make_imagefolder, "extra/x.png", None, "only split folders"),
    ],
)
def test_malformed_files(tmp_path, name, build, file, content, expected):
    layout = build(tmp_path)
    target = layout.root / file
    if content is None:
        from layouts import write_image

        write_image(target)
    else:
        target.write_text(content)
    message = _error(name, layout.root)
    assert expected in message
    assert message.startswith(str(layout.root))


def test_mat_with_wrong_fields(tmp_path):
    import numpy as np
    from scipy.io import savemat

    layout = make_cars196(tmp_path)
    bad = layout.root / "devkit" / "cars_train_annos.mat"
    savemat(bad, {"annotations": np.zeros((1, 2), dtype=[("fname", object), ("label", object)])})
    message = _error("cars196", layout.root)
    assert message.startswith(f"{bad}: expected struct array 'annotations' with fields")
    assert "bbox_x1" in message
