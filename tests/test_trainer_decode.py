"""``data.decode_on: trainer``: view workers that only draw, and a trainer that decodes the stored images
(torchvision's decode_jpeg: here on the CPU, nvJPEG on a GPU), cuts the drawn regions and finishes the
views. The same draws per seed as the worker-decoded path, the same views within a small fraction of a
level, and the config's refusal. No Ray: the view actor runs in this process, as forked view workers run it."""
from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from fgray import feed
from fgray.config import ExperimentConfig
from fgray.data.inputs import CROP_SUFFIX, DEFERRED_SUFFIX, ENCODED_KEY, Inputs, ViewRecipe
from fgray.data.sources.synthetic_shards import photo_jpegs
from fgray.data.views.transforms import decode, eval_transform
from fgray.data.view_actor import ViewActor, stacked
from fgray.data.views import Source, build_recipe, moco
from fgray.data.views.trainer_decode import CROP_WIDTH, crop_row, decode_views
from fgray.engine import IMAGENET_STD, to_device
from fgray.validation import ConfigError, validate

pytestmark = pytest.mark.usefixtures("one_thread")

PHOTOS = [encoded for encoded, _ in photo_jpegs(40)]  # 500 x 375 JPEGs at quality 90, as CUB stores them
CPU = torch.device("cpu")
RECIPE_KEYS = {"moco_pair": ("view1", "view2"), "clean_augmented": ("clean", "view1", "view2")}
MOCO = tuple(RECIPE_KEYS)  # the recipes with deferred keys


def _recipes(name: str, size: int) -> tuple:
    """The recipe as a view worker builds it with data.decode_on: worker, and with trainer."""
    return build_recipe(ViewRecipe(name), size, True), build_recipe(ViewRecipe(name), size, True, True)


def _draw(recipe, encoded: bytes, seed: int) -> dict:
    torch.default_generator.manual_seed(seed)  # as the view actor seeds each image
    return recipe(Source(encoded))


def _batch(outputs: list[dict]) -> dict:
    """Per-image recipe outputs -> a batch as the view actor hands it on."""
    return {key: stacked([o[key] for o in outputs], torch) for key in outputs[0]}


def _levels(normalised: torch.Tensor) -> torch.Tensor:
    """Normalised images back to levels of 255 (the mean cancels in a difference)."""
    return normalised * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


@pytest.mark.parametrize("name", MOCO)
def test_the_same_seed_draws_the_same_crops_flips_and_ops(name, monkeypatch):
    drawn: list = []  # every view's MocoDraw, in the order drawn
    original = moco.MocoView.draw

    def recorded(self, source):
        drawn.append(original(self, source))
        return drawn[-1]

    monkeypatch.setattr(moco.MocoView, "draw", recorded)
    worker, trainer = _recipes(name, 224)
    for seed, encoded in enumerate(PHOTOS[:12]):
        ours = _draw(worker, encoded, seed)
        worker_draws, worker_state = drawn[-2:], torch.get_rng_state()
        theirs = _draw(trainer, encoded, seed)
        assert drawn[-2:] == worker_draws and torch.equal(torch.get_rng_state(), worker_state)  # no draw more
        assert ENCODED_KEY in theirs and theirs[ENCODED_KEY] == encoded and not set(ours) & {ENCODED_KEY}
        for key, draw in zip(("view1", "view2"), worker_draws):
            assert torch.equal(theirs[key + DEFERRED_SUFFIX], ours[key + DEFERRED_SUFFIX])
            assert np.array_equal(theirs[key + CROP_SUFFIX].numpy(), crop_row(draw.crop, 224, draw.flip))
            assert key not in theirs  # no pixels: the trainer cuts them
        if name == "clean_augmented":  # eval_transform's Resize (short side 256) and CenterCrop, as a row
            assert theirs["clean" + CROP_SUFFIX].tolist() == [0, 0, 375, 500, 256, 341, 16, 58, 224, 0]


# Mean absolute difference per view, in levels of 255, trainer-decoded vs worker-decoded views of the same
# seeds (40 images, 80 views). Measured on this CPU (torchvision's libjpeg decodes as PIL's, bit for bit):
# 224 px: 0.014 mean, 0.053 at most (resize kernels' rounding); finished with the colour ops, 0.012 / 0.065.
# 64 px: 0.93 / 1.45, since a worker decodes these JPEGs at 1/2 or 1/4 in the DCT (its draft) and the
# trainer at full size, which is also what the reference does. nvJPEG on a GPU is not measured here.
TOLERANCE = {224: (0.1, 0.25), 64: (1.5, 2.5)}  # (mean over views, worst view)


@pytest.mark.parametrize("name", MOCO)
@pytest.mark.parametrize("size", [224, 64])
def test_trainer_decoded_views_are_the_worker_decoded_views(name, size):
    worker, trainer = _recipes(name, size)
    ours = _batch([_draw(worker, encoded, seed) for seed, encoded in enumerate(PHOTOS)])
    theirs = _batch([_draw(trainer, encoded, seed) for seed, encoded in enumerate(PHOTOS)])
    assert theirs[ENCODED_KEY].dtype == object and theirs["view1" + CROP_SUFFIX].shape == (40, CROP_WIDTH)
    cut, finished, reference = decode_views(theirs, CPU), to_device(theirs, CPU), to_device(ours, CPU)
    assert set(finished) == set(reference) == set(RECIPE_KEYS[name])  # rows and bytes consumed
    mean, worst = TOLERANCE[size]
    for key in RECIPE_KEYS[name]:
        assert cut[key].shape == (40, 3, size, size) and cut[key].dtype == torch.uint8
        crops = (cut[key].float() - torch.from_numpy(ours[key]).float()).abs().mean(dim=(1, 2, 3))
        views = _levels(finished[key] - reference[key])
        absolute, signed = views.abs().mean(dim=(1, 2, 3)), views.mean(dim=(1, 2, 3))
        assert crops.mean() < mean and crops.max() < worst, (key, crops.mean(), crops.max())
        assert absolute.mean() < mean and absolute.max() < worst and signed.mean().abs() < 0.1 * worst
    if name == "clean_augmented":  # the trainer's clean view is eval_transform's on the decoded image
        expected = torch.stack([eval_transform(size)(decode(encoded)) for encoded in PHOTOS]).float()
        assert (cut["clean"].float() - expected).abs().mean() < 0.01


def test_png_images_decode_on_the_trainers_cpu_beside_jpegs():
    buf = io.BytesIO()
    Image.open(io.BytesIO(PHOTOS[0])).save(buf, format="PNG")
    stored = [buf.getvalue(), PHOTOS[1], PHOTOS[2]]  # a mixed batch: the JPEGs still decode together
    # 224 px: no worker decodes these at a reduced scale, so the decoders and the resizes are what differ
    worker, trainer = _recipes("moco_pair", 224)
    ours = _batch([_draw(worker, encoded, seed) for seed, encoded in enumerate(stored)])
    cut = decode_views(_batch([_draw(trainer, encoded, seed) for seed, encoded in enumerate(stored)]), CPU)
    for key in ("view1", "view2"):
        assert (cut[key].float() - torch.from_numpy(ours[key]).float()).abs().mean(dim=(1, 2, 3)).max() < 0.1


def test_a_batch_the_device_decoder_rejects_decodes_on_the_cpu_instead(monkeypatch):
    # nvJPEG rejects some encodings libjpeg reads: that batch would fail the same way on every retry.
    import torchvision.io

    def rejects(*args, **kwargs):
        raise RuntimeError("nvjpegDecode failed: NVJPEG_STATUS_JPEG_NOT_SUPPORTED")

    worker, trainer = _recipes("moco_pair", 224)
    drawn = _batch([_draw(trainer, encoded, seed) for seed, encoded in enumerate(PHOTOS[:3])])
    expected = decode_views(dict(drawn), CPU)
    monkeypatch.setattr(torchvision.io, "decode_jpeg", rejects)
    fallback = decode_views(dict(drawn), CPU)
    assert all(torch.equal(fallback[key], expected[key]) for key in ("view1", "view2"))


def test_a_decoded_tensor_is_still_cropped_on_the_worker():
    image = decode(PHOTOS[0])  # tests and declared batches hand recipes tensors: no bytes to pass on
    torch.default_generator.manual_seed(3)
    asked = build_recipe(ViewRecipe("moco_pair"), 64, True, True)(image)
    torch.default_generator.manual_seed(3)
    deferred = build_recipe(ViewRecipe("moco_pair"), 64, True)(image)
    assert set(asked) == set(deferred) == {"view1", "view1@ops", "view2", "view2@ops"}
    assert all(torch.equal(asked[k], deferred[k]) for k in asked)


def _actor(decode_views: bool, views=("moco_pair", "crop_flip")) -> ViewActor:
    small = [encoded for encoded, _ in photo_jpegs(6, width=80, height=60)]
    table = pa.table({"image": small, "image_id": [f"img{i}" for i in range(6)], "label": [3, 5, 3, 5, 3, 5]})
    inputs = Inputs(views=tuple(ViewRecipe(v) for v in views), columns=("label",), defer_views=True,
                    decode_views=decode_views)
    return ViewActor([table], inputs, 32, seed=11, label_map={3: 0, 5: 1}, caches={})


def test_view_actor_hands_on_one_encoded_image_and_the_regions_through_ray_datas_blocks():
    from ray.data.block import BlockAccessor  # the conversion a Ray Data actor's output goes through (no Ray)

    index = {"row": np.arange(6), "epoch": np.full(6, 2)}
    drawn, decoded = _actor(True)(index), _actor(False)(index)
    assert set(drawn) == {ENCODED_KEY, "view1@crop", "view1@ops", "view2@crop", "view2@ops", "image", "label"}
    assert drawn[ENCODED_KEY].shape == (6,) and isinstance(drawn[ENCODED_KEY][0], bytes)  # one per image
    assert np.array_equal(drawn["image"], decoded["image"])  # crop_flip has no deferred keys: drawn whole
    block = BlockAccessor.batch_to_block(drawn)
    assert pa.types.is_binary(block.schema.field(ENCODED_KEY).type)
    carried = BlockAccessor.for_block(block).to_batch_format("numpy")
    assert list(carried[ENCODED_KEY]) == list(drawn[ENCODED_KEY])
    finished, reference = to_device(carried, CPU), to_device(decoded, CPU)
    assert set(finished) == {"view1", "view2", "image", "label"}
    for key in ("view1", "view2"):  # small crops: the worker's and the trainer's resize round differently
        assert _levels(finished[key] - reference[key]).abs().mean(dim=(1, 2, 3)).max() < 0.5  # 0.21 here


def _experiment(views_on: str, gpus: float, decode_on: str = "trainer", **resources) -> ExperimentConfig:
    return validate(ExperimentConfig, {
        "method": {"name": "mocov2"}, "backbone": {"name": "resnet50"},
        "data": {"views_on": views_on, "decode_on": decode_on, "image_size": 224},
        "resources": {"gpus_per_worker": gpus, "data_cpus": 1, **resources}}, deep=False)


def test_decode_on_the_trainer_needs_the_views_finished_there():
    with pytest.raises(ConfigError, match=r"^data\.decode_on: trainer needs the views finished on the trainer, "
                                          r"but data\.views_on is cpu: use views_on gpu or trainer"):
        _experiment("cpu", 1)
    with pytest.raises(ConfigError, match=r"^data\.decode_on: trainer .* data\.views_on is auto, cpu in a trial "
                                          r"without a GPU"):
        _experiment("auto", 0)
    with pytest.raises(ConfigError, match=r"^data\.decode_on: must be one of"):
        _experiment("gpu", 1, "gpu")
    assert _experiment("auto", 1).decode_views and _experiment("trainer", 0).decode_views
    assert not _experiment("gpu", 1, "worker").decode_views and not _experiment("cpu", 1, "worker").decode_views


def test_the_dry_run_counts_only_the_draws_when_the_trainer_decodes():
    drawn, decoded = feed.per_core_rate(["moco_pair"], 224, True, True), feed.per_core_rate(["moco_pair"], 224, True)
    assert drawn > 10 * decoded
    mixed = feed.per_core_rate(["moco_pair", "crop_flip"], 224, True, True)  # crop_flip still decodes on a worker
    assert mixed == pytest.approx(1000 / (feed.TRAINER_DECODE_MS["moco_pair"] + feed.DECODE_MS
                                          + feed.VIEW_MS["crop_flip"]["gpu"]))
    line = feed.experiment_line(_experiment("gpu", 1, data_actors=1))
    assert "the draws, decode + crop + the rest on the GPU" in line and "WARNING" not in line
    starved = feed.experiment_line(_experiment("gpu", 1, "worker", data_actors=1))
    assert "WARNING: data-bound" in starved and starved.endswith("or data.decode_on: trainer")
