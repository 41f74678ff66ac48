"""DVA's zero-shot detector boxes (spec dva.md §2.3, ``fgray.data.frozen.detect``) on a tiny randomly
initialised OWLv2 built from its config and saved here (nothing is downloaded): one box per image in
the stored image's pixels with the whole-image fallback, class-name prompts, boxes detected once and
reused, the training split's boxes replaced by image id, the config checks and the CLI."""
from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from fgray.config import ConfigError, ExperimentConfig
from fgray.data import pipeline
from fgray.data.frozen import detect
from fgray.data.__main__ import main
from fgray.data.inputs import DetectorSpec
from fgray.data.pipeline import PreparedDataset
from fgray.data.sources.synthetic import SyntheticSpec
from fgray.data.sources.synthetic_shards import write_shards
from fgray.data.frozen.embedding_cache import embed_in_process
from fgray.storage import read_folder, write_complete
from fgray.methods.configs_supervised import DVAConfig
from fgray.validation import validate


def save_tiny_owlv2(folder: str) -> str:
    """A 1-layer, 32-wide OWLv2 (64 px images, 16 px patches) and its processor, with a character
    vocabulary (index 0 is a plain token: OWL masks queries whose first token id is 0)."""
    from transformers import (CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor,
                              Owlv2Processor)

    vocab = {"!": 0}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c], vocab[c + "</w>"] = len(vocab), len(vocab) + 1
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)
    ids = {"bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
           "pad_token_id": vocab["<|endoftext|>"]}
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    text = {**small, **ids, "vocab_size": len(vocab), "max_position_embeddings": 16}
    config = Owlv2Config(text_config=text,
                         vision_config={**small, "image_size": 64, "patch_size": 16}, projection_dim=32)
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():  # scores = sigmoid(cosine) in (0.27, 0.73), boxes near their patch's prior box:
        for layer in (model.class_head.logit_shift, model.class_head.logit_scale):  # random ones saturate
            layer.weight.zero_(), layer.bias.zero_()
        model.box_head.dense2.weight.mul_(0.01)
    model.save_pretrained(folder)
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}),
                               tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory) -> str:
    return save_tiny_owlv2(str(tmp_path_factory.mktemp("owlv2")))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> PreparedDataset:
    root = str(tmp_path_factory.mktemp("shards") / "synthetic")
    spec = SyntheticSpec(num_classes=4, images_per_class=3, image_size=32)
    return PreparedDataset(root, write_shards(spec, root))


def png(height: int, width: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


SIZES = [(40, 60), (50, 30), (32, 32)]  # (H, W): wide, tall, square
BATCH = {"image": np.array([png(h, w, i) for i, (h, w) in enumerate(SIZES)], dtype=object),
         "image_id": np.array(["a", "b", "c"]),
         "class_name": np.array(["001.Black_footed_Albatross", "Laysan_Albatross", "car"], dtype=object)}


def test_actor_returns_one_box_per_image_in_stored_pixels(tiny_detector):
    from transformers.image_transforms import center_to_corners_format

    actor = detect.DetectActor(DetectorSpec(path=tiny_detector, box_threshold=0.0))
    out = actor(BATCH)
    assert out["bbox"].shape == (3, 4) and out["bbox"].dtype == np.float32
    assert out["image_id"].tolist() == ["a", "b", "c"] and out["detected"].all()
    for box, (h, w) in zip(out["bbox"], SIZES):
        assert 0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h
    # The best query's box: OWLv2 boxes are relative to the image padded to a square of its long side.
    for i, (h, w) in enumerate(SIZES):
        image = actor.decode(BATCH["image"][i])
        inputs = actor.processor(text=[[detect.prompt_text(BATCH["class_name"][i])]], images=[image],
                                 return_tensors="pt", truncation=True)
        with torch.no_grad():
            outputs = actor.model(**inputs)
        boxes = np.clip(center_to_corners_format(outputs.pred_boxes[0]).numpy() * max(h, w), 0, [w, h, w, h])
        inside = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # not in the padding only
        scores = torch.sigmoid(outputs.logits[0, :, 0]).numpy()  # saturated ties: the first box wins
        best = int(np.where(inside, scores, -np.inf).argmax())
        np.testing.assert_allclose(out["bbox"][i], boxes[best], atol=1e-3)
        assert abs(out["score"][i] - scores[best]) < 1e-6
    # Nothing passes a threshold of 1: the whole image, counted as not detected (spec §2.3 guess).
    assert (0.2 < out["score"]).all() and (out["score"] < 0.8).all()
    strict = detect.DetectActor(DetectorSpec(path=tiny_detector, box_threshold=1.0))(BATCH)
    assert not strict["detected"].any()
    np.testing.assert_array_equal(strict["score"], out["score"])  # the best box's score, counted
    np.testing.assert_array_equal(strict["bbox"], [[0, 0, w, h] for h, w in SIZES])


class _Spy:
    """Records what the processor is asked to tokenise; delegates everything."""

    def __init__(self, processor):
        self.processor, self.texts = processor, []

    def __call__(self, **kwargs):
        self.texts.append(kwargs["text"])
        return self.processor(**kwargs)

    def __getattr__(self, name):
        return getattr(self.processor, name)


@pytest.mark.parametrize("prompt,expected", [
    ("class_name", [["Black footed Albatross"], ["Laysan Albatross"], ["car"]]),
    ("meta_category", [["bird"], ["bird"], ["bird"]]),
])
def test_prompts_are_the_class_names_or_the_meta_category(tiny_detector, prompt, expected):
    actor = detect.DetectActor(DetectorSpec(path=tiny_detector, prompt=prompt, meta_category="bird"))
    actor.processor = spy = _Spy(actor.processor)
    actor(BATCH)
    assert spy.texts == [expected]


def test_boxes_are_detected_once_and_reused(tiny_detector, prepared, monkeypatch):
    spec = DetectorSpec(path=tiny_detector, batch_size=4)
    detected, real = [], detect.detect_rows

    def counted(spec, rows, *args, **kwargs):
        detected.append(rows.num_rows)
        return real(spec, rows, *args, **kwargs)

    monkeypatch.setattr(detect, "detect_rows", counted)
    ids = pipeline.read_rows(prepared, None, ["image_id"]).column("image_id").to_numpy(zero_copy_only=False)
    first = detect.ensure_boxes(spec, prepared, ids[:5])
    assert first.startswith(f"{prepared.root}/_boxes/{detect.boxes_address(spec, prepared)}/")
    assert os.path.isfile(f"{first}/_COMPLETE") and os.path.isfile(f"{first}/part-00000.parquet")
    table = read_folder(first)
    assert table.schema == detect.BOX_SCHEMA
    assert sorted(table.column("image_id").to_pylist()) == sorted(ids[:5])
    assert detect.ensure_boxes(spec, prepared, ids[:5]) == first and detected == [5]  # reused: no second pass
    # A larger split: only its new images are detected, into a folder that holds them all.
    every = detect.ensure_boxes(spec, prepared, None)
    assert detected == [5, len(ids) - 5] and every != first
    assert sorted(read_folder(every).column("image_id").to_pylist()) == sorted(ids)
    assert detect.ensure_boxes(spec, prepared, ids[3:]) == every and len(detected) == 2
    # Another threshold is another address.
    other = detect.ensure_boxes(DetectorSpec(path=tiny_detector, box_threshold=0.9), prepared, ids[:2])
    assert other.rsplit("/", 2)[-2] != every.rsplit("/", 2)[-2] and detected[-1] == 2


def test_training_split_takes_the_detected_boxes_by_image_id(ray_local, prepared, tmp_path):
    from fgray.config import DataConfig
    from fgray.data.inputs import Inputs, ViewRecipe

    data = DataConfig(name="synthetic", root=prepared.root, image_size=32, synthetic={"num_classes": 4,
                                                                                      "images_per_class": 3})
    ids = pipeline.assign(prepared, data).train
    order = np.random.default_rng(0).permutation(len(ids))  # stored in another order than the split's
    boxes = {image_id: [i, i + 1, i + 10, i + 12] for i, image_id in enumerate(ids)}
    table = pa.table({"image_id": [ids[i] for i in order], "bbox": [boxes[ids[i]] for i in order],
                      "score": np.ones(len(ids), np.float32), "detected": np.ones(len(ids), bool)})
    folder = write_complete(str(tmp_path / "boxes" / "w"), table.cast(detect.BOX_SCHEMA))
    inputs = Inputs(views=(ViewRecipe("object_background"),), columns=("label",))
    split = pipeline.training_split(prepared, ids, data, inputs, "dva", {}, boxes=folder)
    rows = pipeline.split_rows(split)  # as a trainer reads them: in the split's row order
    assert rows.column("image_id").to_pylist() == list(split.ids)
    got = dict(zip(rows.column("image_id").to_pylist(), rows.column("bbox").to_pylist()))
    assert got == {k: [float(v) for v in box] for k, box in boxes.items()}
    assert rows.schema.field("bbox").type == detect.BOX_TYPE
    with pytest.raises(KeyError) as err:  # a training image without a detected box
        detect.with_boxes(pipeline.read_rows(prepared, None, ["image_id", "bbox"]), folder)
    assert "no detected box" in str(err.value) and "\n" not in str(err.value)


def test_detector_pool_matches_the_in_process_pass(ray_local, tiny_detector, prepared):
    spec = DetectorSpec(path=tiny_detector, box_threshold=0.0, batch_size=4)
    rows = pipeline.Rows(prepared, None, ("image", "image_id", "class_name"))
    pooled = detect.detect_rows(spec, rows, use_gpu=False, max_actors=1, local_max_rows=0)  # a Ray Data actor
    here = detect.box_table(embed_in_process(detect.DetectActor(spec), rows.read(), spec.batch_size))
    pooled = pooled.sort_by("image_id")
    assert pooled.schema == detect.BOX_SCHEMA and pooled.num_rows == rows.num_rows
    np.testing.assert_allclose(np.stack(pooled.column("bbox").to_pylist()),
                               np.stack(here.sort_by("image_id").column("bbox").to_pylist()), atol=1e-4)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_config_needs_a_saved_detector_folder(tiny_detector, tmp_path):
    base = {"backbone": {"name": "test_vit"}, "data": {"image_size": 32}}
    with pytest.raises(ConfigError) as err:
        validate(ExperimentConfig, {**base, "method": {"name": "dva", "boxes": "detector"}})
    assert "detector.path" in _one_line(err)
    missing = str(tmp_path / "no-detector")
    with pytest.raises(ConfigError) as err:
        validate(ExperimentConfig, {**base, "method": {"name": "dva", "boxes": "detector",
                                                       "detector": {"path": missing}}})
    message = _one_line(err)
    assert message.startswith("method.detector.path:") and f"{missing}/config.json" in message
    assert "save_pretrained" in message
    # Trials re-validate the schema only: the folder is checked where the sweep starts.
    validate(ExperimentConfig, {**base, "method": {"name": "dva", "boxes": "detector",
                                                   "detector": {"path": missing}}}, deep=False)
    cfg = DVAConfig(boxes="detector", detector={"path": tiny_detector, "prompt": "meta_category"})
    assert cfg.inputs.detector == DetectorSpec(path=tiny_detector, prompt="meta_category")
    assert DVAConfig(detector={"path": tiny_detector}).inputs.detector is None  # boxes: dataset (default)
    no_opa = DVAConfig(boxes="detector", detector={"path": tiny_detector}, opa=False, dpt=False)
    assert no_opa.inputs.detector is None  # the original images only: no boxes


def test_cli_detect_stores_the_boxes_with_the_shards(tiny_detector, prepared, capsys):
    assert main(["detect", "--root", prepared.root, "--detector", tiny_detector, "--box-threshold", "0",
                 "--split", "all"]) == 0
    line = capsys.readouterr().out.strip()
    folder = line.split(":")[0]
    assert folder.startswith(f"{prepared.root}/_boxes/")
    assert line.endswith("12 boxes, 12 detected, 0 whole images")
    assert read_folder(folder).num_rows == 12
    assert main(["detect", "--root", prepared.root, "--detector", tiny_detector, "--box-threshold", "0"]) == 0
    assert capsys.readouterr().out.startswith(f"{folder}: 12 boxes")  # the training side: already there
    # Bad input: one line on stderr, exit 2.
    assert main(["detect", "--root", prepared.root, "--detector", prepared.root + "/nothing"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert main(["detect", "--root", prepared.root + "/nothing", "--detector", tiny_detector]) == 2
    assert "manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["detect", "--root", prepared.root, "--detector", tiny_detector, "--prompt", "colour"])
    assert exit_.value.code == 2


@pytest.mark.slow
def test_dva_trains_on_detected_boxes_through_ray(ray_local, tiny_detector, tmp_path):
    # The whole path: the trial detects the training images' boxes once (stored with the shards),
    # trains DVA's object and background views on them, and a second sweep reuses the boxes.
    from fgray.sweep import main as sweep

    args = [os.path.join(os.path.dirname(os.path.dirname(__file__)), "sweeps", "dva_demo.yaml"), "--profile",
            "smoke", "--storage", str(tmp_path / "results"), "--set", "search.points=[]", "--set", "search.seeds=1",
            "--set", "method.boxes=detector", "--set", f"method.detector.path={tiny_detector}",
            "--set", f"data.root={tmp_path / 'shards'}", "--set", "eval.baseline=false"]
    assert sweep(args) == 0
    import json

    summary = json.loads((tmp_path / "results" / "dva_demo-smoke" / "summary.json").read_text())
    assert summary["num_errors"] == 0 and "train/loss_pl" in summary["trials"][0]["metrics"]
    stored = list((tmp_path / "shards").glob("_boxes/*/*/_COMPLETE"))
    assert len(stored) == 1
    assert sweep([*args, "--set", "name=again"]) == 0
    assert list((tmp_path / "shards").glob("_boxes/*/*/_COMPLETE")) == stored
