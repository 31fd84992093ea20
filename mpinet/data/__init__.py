"""Data: readers of real formats, a distributed sampler, device augmentation, a prefetching loader.

    from mpinet.data import get_dataset, DistributedSampler, DataLoader, Augment
    train = get_dataset("fashion-mnist", split="train")          # ArrayDataset, nothing downloaded
    sampler = DistributedSampler(len(train), batch_size=64, rank=rank, world_size=size, seed=0)
    loader = DataLoader(train, sampler, transform=Augment(crop_padding=2, flip=True))
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for x, y, global_count in loader: ...                    # x on the backend's device

Images are float32 in [0, 1] by default, or uint8 with ``raw=True`` (the loader converts on the
device); labels are int64. Modules: dataset (ArrayDataset, DataFormatError), idx (MNIST format),
cifar, image_folder, builtin (digits, synthetic), registry (get_dataset), sampler, augment, loader.
"""
from .arrays import SequenceDataset, TensorDataset
from .augment import Augment, channel_stats, flip_horizontal, normalize, pad_crop
from .dataset import ArrayDataset, DataFormatError
from .loader import DataLoader
from .registry import DATASET_NAMES, DEFAULT_DATASET, get_dataset
from .sampler import Batch, DistributedSampler, ShardSampler, even_split, shard_indices

__all__ = [
    "ArrayDataset", "SequenceDataset", "TensorDataset",
    "Augment", "Batch", "DATASET_NAMES", "DEFAULT_DATASET", "DataFormatError",
    "DataLoader", "DistributedSampler", "ShardSampler", "channel_stats", "even_split",
    "flip_horizontal", "get_dataset", "normalize", "pad_crop", "shard_indices",
]
