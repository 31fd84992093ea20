"""``python -m mpinet.label``: bootstrap | labelme | coco | predict (mpinet/label/__init__.py)."""

from __future__ import annotations

import argparse
import json
import sys

from ..data.dataset import DataFormatError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mpinet.label",
        description=(
            "Make mask-folder data (images/ + masks/) for segmentation: bootstrap masks from raw "
            "cell images, import corrected masks from LabelMe or COCO, predict masks with a "
            "trained U-Net."
        ),
    )
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bootstrap", help="Otsu threshold + distance-transform watershed")
    b.add_argument("src", help="a folder of images, or one image")
    b.add_argument("out", help="output folder (gets images/ and masks/)")
    b.add_argument("--tile", type=int, help="cut into TILE x TILE pieces (edges dropped)")
    b.add_argument(
        "--stain",
        choices=["gray", "hematoxylin"],
        default="gray",
        help="foreground signal: grey level, or the hematoxylin channel of a stained "
        "RGB slide (nuclei)",
    )
    b.add_argument(
        "--polarity",
        choices=["auto", "bright", "dark"],
        default="auto",
        help="cells brighter or darker than background (auto: cells are the minority)",
    )
    b.add_argument(
        "--min-size", type=int, default=20, help="drop objects of at most this many pixels"
    )
    b.add_argument(
        "--min-distance", type=int, default=4, help="least distance between cell centres"
    )
    lm = sub.add_parser("labelme", help="LabelMe JSON polygons -> masks")
    lm.add_argument("src", help="folder of LabelMe .json files")
    lm.add_argument("out")
    lm.add_argument(
        "--classes",
        help="comma-separated labels, value k+1 for the k-th (default: the sorted labels found)",
    )
    co = sub.add_parser("coco", help="COCO polygons / RLE -> masks")
    co.add_argument("annotations", help="the instances .json")
    co.add_argument("images", help="folder of the images it names")
    co.add_argument("out")
    pr = sub.add_parser("predict", help="masks from a trained network's weights")
    pr.add_argument("src", help="folder of images")
    pr.add_argument("out", help="folder for the predicted masks (PNG)")
    pr.add_argument("--weights", required=True, help="the trainer's --save-weights file")
    pr.add_argument("--model", default="unet")
    pr.add_argument(
        "--model-opt",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="as given to the trainer (e.g. base_width=8)",
    )
    pr.add_argument("--num-classes", type=int, default=2)
    pr.add_argument("--in-channels", type=int, default=1)
    pr.add_argument("--multiple", type=int, default=16, help="pad images to a multiple of this")
    pr.add_argument("--normalize-like", metavar="DATA_DIR",
                    help="the --data-dir the model was trained on, when it was trained with "
                         "--augment (inputs normalized with that training split's statistics)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "bootstrap":
            from .bootstrap import bootstrap_folder  # lazy

            n = bootstrap_folder(
                args.src,
                args.out,
                args.tile,
                args.stain,
                args.min_size,
                args.min_distance,
                args.polarity,
            )
            print(
                f"wrote {n} image/mask pairs to {args.out}/images and {args.out}/masks (mask "
                "255 = cell); correct them (e.g. in LabelMe), then train with --dataset mask-folder"
            )
        elif args.command == "labelme":
            from .imports import import_labelme  # lazy

            classes = import_labelme(
                args.src, args.out, args.classes.split(",") if args.classes else None
            )
            print(
                f"classes (mask value k+1): {classes}; train with --dataset mask-folder "
                f"--mask-values {','.join(str(v) for v in range(len(classes) + 1))}"
            )
        elif args.command == "coco":
            from .imports import import_coco  # lazy

            classes = import_coco(args.annotations, args.images, args.out)
            print(
                f"classes (mask value k+1): {classes}; train with --dataset mask-folder "
                f"--mask-values {','.join(str(v) for v in range(len(classes) + 1))}"
            )
        else:
            from .predict import predict_folder  # lazy

            opts = {}
            for item in args.model_opt:
                key, _, value = item.partition("=")
                try:
                    opts[key] = json.loads(value)
                except json.JSONDecodeError:
                    opts[key] = value
            n = predict_folder(
                args.weights,
                args.src,
                args.out,
                args.model,
                args.num_classes,
                args.in_channels,
                opts,
                args.multiple,
                args.normalize_like,
            )
            print(f"wrote {n} predicted masks to {args.out}")
    except (FileNotFoundError, DataFormatError, ValueError, OSError) as e:
        print(f"mpinet.label: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
