"""Small image trees written for the streaming and worker tests (lossless PNG: exact pixels)."""

from pathlib import Path

import numpy as np


def write_image_tree(root: Path, per_class=(5, 4, 4), size=(6, 5), seed=0, split="train") -> Path:
    """root/<split>/<class>/<i>.png, classes c0, c1, ...; random RGB pixels. Returns root."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, count in enumerate(per_class):
        folder = root / split / f"c{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rgb = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(folder / f"{i:03d}.png")
    return root
