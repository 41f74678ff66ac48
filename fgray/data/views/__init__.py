"""Views: how a training image becomes the batch arrays a method declares (DESIGN.md §1, fgray/data's
"views" role). The declarations are ``fgray.data.inputs.RECIPES``; here are their implementations::

    recipe = build_recipe(view_recipe, image_size)      # view_recipe: inputs.ViewRecipe
    out = recipe(image, box)  # image: Source (encoded bytes) or (3, H, W) uint8 RGB; box (4,) x1, y1, x2, y2 or None

``out`` holds exactly ``RECIPES[name].keys``: uint8 images (3, S, S), grid crops (M, 3, S, S), boxes
float32, flags bool, S = image_size; built with ``defer=True``, a recipe's deferred keys also get
``<key>@ops`` rows that the trainer applies on its device (``deferred``); with ``decode=True`` too, no
pixels: each key's drawn region ``<key>@crop`` and the encoded image ``@encoded``, which the trainer
decodes and cuts (``trainer_decode``). Every random draw comes
from torch's global CPU RNG, so the caller's ``torch.default_generator.manual_seed(image_seed(...))``
makes an image's views bit-identical whichever actor draws them.

Modules: ``params`` (the draws), ``source`` (decoding, reduced where the crops allow),
``worker_colour`` (jitter, greyscale, blur of one view: a colour lookup table in PIL, scipy's blur),
``moco`` (MoCo v2's views), ``recipes`` (crop + flip, DVA's objects and backgrounds, VAPNet's grid
crops), ``colour`` (the same ops per image of a batch, Kornia, on any device), ``deferred`` (the
trainer's side) and ``trainer_decode`` (the trainer's decoding, ``data.decode_on``); ``transforms``
(torchvision's decode and the eval views, ``EvalViews``). Importing this package loads torch and
torchvision: who draws the views (``fgray.data.view_actor``, a Ray Data actor; ``fgray.data.forked_views``,
a one-worker trial's forked workers) imports it where it draws, so a trial's driver never does.

fgray/data's other roles: ``sources`` (where images come from: the layout readers, ``prepare``,
the synthetic set), ``frozen`` (passes of frozen models over a dataset, computed once: embedding
caches, detector boxes), and at the top the contracts (``schema``, ``protocols``, ``inputs``) and
the training pipeline (``rows``, ``pipeline``, ``view_actor``, ``forked_views``, ``selection``,
``declared``).
"""
from fgray.data.views import moco, recipes  # noqa: F401  (register the recipes)
from fgray.data.views.recipes import (GridCrops, ObjectBackground, crop_flip_with_box, crop_regions,  # noqa: F401
                                      grid_boxes, mean_blur_region, object_crop)
from fgray.data.views.registry import DEFERRED_SUFFIX, Views, ViewFn, build_recipe, check_registry  # noqa: F401
from fgray.data.views.source import Source  # noqa: F401

check_registry()
