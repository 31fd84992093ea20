"""python -m mpinet.train on a mask-folder tree (images/ + masks/), as a user runs it: U-Net on
2 ranks with a Dice loss and per-class scores; image-folder refuses the same tree."""

import subprocess
import sys

import numpy as np
from PIL import Image
from test_train_cli import ENV, ROOT


def write_tree(root, n_train=12, n_test=4, size=16):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, n in (("train", n_train), ("test", n_test)):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            cy, cx, r = rng.integers(4, size - 4), rng.integers(4, size - 4), rng.integers(2, 5)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8) * 255
            img = np.clip(mask * 0.6 + 50 + rng.normal(0, 10, mask.shape), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / split / "images" / f"cell{i}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"cell{i}.png")
    return root


def run(n, *flags):
    cmd = ["mpiexec", "-n", str(n), sys.executable, "-m", "mpinet.train", "--quiet", *flags]
    return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=170)


def test_unet_on_a_mask_folder_reports_per_class_scores(tmp_path):
    tree = write_tree(tmp_path)
    proc = run(
        2,
        "--model",
        "unet",
        "--model-opt",
        "base_width=4",
        "--model-opt",
        "depth=2",
        "--dataset",
        "mask-folder",
        "--data-dir",
        str(tree),
        "--epochs",
        "2",
        "--batch-size",
        "3",
        "--optimizer",
        "adam",
        "--lr",
        "0.01",
        "--loss",
        "dice",
        "--class-weights",
        "1,2",
        "--mask-values",
        "0,255",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("final test per class:")]
    assert len(lines) == 1 and "value 0: IoU" in lines[0] and "value 255: IoU" in lines[0], (
        proc.stdout
    )
    refused = run(1, "--dataset", "image-folder", "--data-dir", str(tree))
    assert refused.returncode == 2 and "--dataset mask-folder" in refused.stderr, refused.stderr
    wrong = run(1, "--loss", "dice")  # digits: one label per image
    assert wrong.returncode == 2 and "for segmentation data" in wrong.stderr, wrong.stderr
