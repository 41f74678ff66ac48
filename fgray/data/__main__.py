"""``python -m fgray.data``: prepare Parquet shards from a dataset layout, or describe them.

    python -m fgray.data prepare --dataset cub200 --root /data/CUB_200_2011 --out /data/shards/cub200
    python -m fgray.data info /data/shards/cub200
    python -m fgray.data detect --root /data/shards/cub200 --detector /models/owlv2-base-patch16-ensemble

Bad input (unknown dataset, missing folder, malformed dataset file, bad option) prints one
line ``error: ...`` to stderr and exits 2, before Ray starts.
"""
from __future__ import annotations

import argparse
import logging
import sys


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message)
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m fgray.data", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("prepare", help="encode a dataset layout into Parquet shards + manifest.json")
    p.add_argument("--dataset", required=True, help="reader name, e.g. cub200, cars196, sop, imagefolder, csv")
    p.add_argument("--root", required=True, help="the dataset folder as shipped (local path or s3://...)")
    p.add_argument("--out", required=True, help="output folder (local path or s3://...)")
    p.add_argument("--short-side", type=int, default=256, help="resize so the short side is N px; 0 keeps the size")
    p.add_argument("--image-format", default="jpeg", choices=["jpeg", "png"])
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.add_argument("--rows-per-shard", type=int, default=None, help="images per Parquet shard (about)")
    p.add_argument("--force", action="store_true", help="re-encode even if the output is up to date")
    i = sub.add_parser("info", help="print the manifest summary of a prepared folder")
    i.add_argument("dir", help="prepared folder (local path or s3://...)")
    d = sub.add_parser("detect", help="store a zero-shot detector's boxes with the shards (DVA)")
    d.add_argument("--root", required=True, help="prepared folder (local path or s3://...)")
    d.add_argument("--detector", required=True, help="folder of a saved transformers detector: local, "
                   "file:///mount/..., or s3:// / gs:// (copied to this machine's cache)")
    d.add_argument("--prompt", default="class_name", choices=["class_name", "meta_category"])
    d.add_argument("--meta-category", default="object", help="every image's prompt with meta_category")
    d.add_argument("--box-threshold", type=float, default=0.35, help="at or below: the whole image")
    d.add_argument("--batch-size", type=int, default=16, help="images per detector call")
    d.add_argument("--split", default="train", choices=["train", "all"],
                   help="train: the training side (train + validation) of --protocol; all: every image")
    d.add_argument("--protocol", default="open", choices=["open", "closed"])
    return parser


def _prepare(args) -> int:
    from fgray.data.sources.prepare import DEFAULT_ROWS_PER_SHARD, prepare
    from fgray.data.sources.readers import READERS, DatasetFormatError

    if args.dataset not in READERS:
        return _fail(f"--dataset: unknown dataset {args.dataset!r}; choose from {', '.join(sorted(READERS))}")
    if args.short_side < 0:
        return _fail(f"--short-side: expected a positive number of pixels (0 keeps the size), got {args.short_side}")
    try:
        manifest = prepare(
            args.dataset, args.root, args.out,
            short_side=args.short_side or None, image_format=args.image_format, quality=args.quality,
            rows_per_shard=args.rows_per_shard or DEFAULT_ROWS_PER_SHARD, force=args.force,
        )
    except DatasetFormatError as e:
        return _fail(str(e))
    except ValueError as e:
        return _fail(str(e).splitlines()[0])
    print(_summary(manifest, args.out))
    return 0


def _summary(m, where: str) -> str:
    lines = [
        f"{where}: {m.dataset}, {m.num_images} images in {len(m.shards)} shard(s), {len(m.classes)} classes",
        "  splits: " + ", ".join(f"{k}={v}" for k, v in m.counts.items()),
        f"  short side: {m.short_side or 'as shipped'}; fgray {m.fgray_version}; content hash {m.content_hash[:12]}",
    ]
    if m.corrupt:
        lines.append(f"  {len(m.corrupt)} corrupt image(s) skipped:")
        lines += [f"    {c['path']}: {c['error']}" for c in m.corrupt[:10]]
        if len(m.corrupt) > 10:
            lines.append(f"    ... and {len(m.corrupt) - 10} more (see manifest.json)")
    return "\n".join(lines)


def _info(args) -> int:
    from fgray.data.sources.prepare import read_manifest

    manifest = read_manifest(args.dir)
    if manifest is None:
        return _fail(f"{args.dir}: no readable manifest.json; "
                     "expected a folder written by 'python -m fgray.data prepare'")
    print(_summary(manifest, args.dir))
    return 0


_FLAGS = {"path": "--detector", "box_threshold": "--box-threshold", "batch_size": "--batch-size",
          "data.root": "--root"}


def _as_flags(message: str) -> str:
    """A config error's keys (``path: ...``) as the flags that set them (``--detector: ...``)."""
    parts = [part.partition(":") for part in message.split("; ")]
    return "; ".join(f"{_FLAGS.get(key, key)}{colon}{rest}" for key, colon, rest in parts)


def _detect(args) -> int:
    """The trials' detector pass (``fgray.data.frozen.detect``), here in this process (on its GPU if any)."""
    from fgray.config import ConfigError
    from fgray.data import pipeline
    from fgray.data.frozen import detect
    from fgray.data.inputs import DetectorSpec
    from fgray.data.protocols import assign_splits
    from fgray.storage import read_folder
    from fgray.validation import validate

    try:
        options = {"path": args.detector, "prompt": args.prompt, "meta_category": args.meta_category,
                   "box_threshold": args.box_threshold, "batch_size": args.batch_size}
        spec = validate(DetectorSpec, options)
        prepared = pipeline.PreparedDataset(args.root, pipeline.read_manifest(args.root))
    except ConfigError as e:
        return _fail(_as_flags(str(e)))
    ids = None
    if args.split == "train":  # validation is carved from the training side: both are detected
        index = pipeline.read_rows(prepared, None, ["image_id", "label", "split"])
        ids = assign_splits(prepared.name, args.protocol, index["image_id"].to_numpy(zero_copy_only=False),
                            index["label"].to_numpy(), index["split"].to_numpy(zero_copy_only=False),
                            val_fraction=0.0, seed=0).train
    folder = detect.ensure_boxes(spec, prepared, ids)
    boxes = read_folder(folder)
    found = sum(boxes.column("detected").to_pylist())
    print(f"{folder}: {boxes.num_rows} boxes, {found} detected, {boxes.num_rows - found} whole images")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return {"prepare": _prepare, "info": _info, "detect": _detect}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
