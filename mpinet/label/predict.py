"""Masks predicted by a trained segmentation network for a folder of images (one process).

The network is built from the zoo as the trainer built it (same --model and --model-opt, the
number of classes and input channels) and loaded from ``--save-weights``' file. Images are read
as the mask-folder reader reads them ([0, 1], grey or RGB by the network's input channels), padded
with zeros to a multiple of ``2**depth`` for a U-Net and cropped back; each mask pixel is the
arg-max class, written as 0/255 for two classes and as the class id otherwise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.augment import normalize
from ..data.masks import IMAGE_SUFFIXES


def training_normalization(data_dir) -> tuple[np.ndarray, np.ndarray]:
    """The (mean, std) the trainer's ``--augment`` normalized with, recomputed from the same
    mask-folder training split the same way (mpinet.data.streaming.dataset_channel_stats)."""
    from ..data.registry import get_dataset  # lazy
    from ..data.streaming import dataset_channel_stats  # lazy

    return dataset_channel_stats(get_dataset("mask-folder", "train", data_dir=data_dir))


def predict_folder(
    weights,
    src,
    out,
    model: str = "unet",
    num_classes: int = 2,
    in_channels: int = 1,
    model_opts: dict | None = None,
    multiple: int = 16,
    normalize_like=None,
) -> int:
    """normalize_like: the training data dir of a model trained with ``--augment`` (its inputs
    were normalized with that split's channel statistics; predictions need the same)."""
    from PIL import Image  # optional dependency (pillow)

    from .. import backend  # lazy
    from ..autograd import Variable, no_grad  # lazy
    from ..checkpoint import load_weights  # lazy
    from ..models import build_model  # lazy

    src, out = Path(src), Path(out)
    files = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {src}")
    net = build_model(
        model,
        num_classes=num_classes,
        in_channels=in_channels,
        input_size=multiple,
        **(model_opts or {}),
    )
    net.load_state_dict(load_weights(weights))
    net = net.to(backend.current())
    net.eval()
    out.mkdir(parents=True, exist_ok=True)
    norm = training_normalization(normalize_like) if normalize_like else None
    for path in files:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L" if in_channels == 1 else "RGB"), dtype=np.float32) / 255
        chw = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        h, w = chw.shape[1:]
        ph, pw = -h % multiple, -w % multiple
        if norm is not None:  # the trainer's eval transform: (x - mean[c]) / std[c]
            chw = normalize(chw[None], *norm)[0]
        x = np.pad(chw, ((0, 0), (0, ph), (0, pw)))[None]  # (1, C, H', W')
        with no_grad():
            logits = net(Variable(backend.to_device(x))).data
        classes = backend.to_numpy(logits.argmax(axis=1))[0, :h, :w].astype(np.uint8)
        mask = classes * 255 if num_classes == 2 else classes
        Image.fromarray(mask).save(out / f"{path.stem}.png")
    return len(files)
