"""Data of any shape for ``Model.fit``/``evaluate``/``predict``: arrays, targets, sequences.

Two data sets besides the image ``ArrayDataset``:

* ``TensorDataset(x, y)``: inputs of any rank (N, ...) and targets of any shape (N, ...), float
  (regression) or integer (class labels, token ids). Nothing is converted silently: floats stay
  float32 (float64 becomes float32, the compute dtype), integers become int64.
* ``SequenceDataset(sequences, targets)``: variable-length sequences (a list of arrays of shape
  (T_i, ...)); each batch is padded to its own longest sequence.

The dataset protocol the loader reads (any object can implement it):

    len(dataset)                     -> number of samples N
    dataset.batch(indices)           -> (x, y) host arrays for those sample indices, where x is an
                                        array or a tuple of arrays (e.g. (padded tokens, lengths));
                                        the network is called as network(Variable(x[0]), *x[1:])

Datasets without ``batch`` are indexed through ``.images`` and ``.labels`` (ArrayDataset).

``as_dataset(x, y, ...)`` turns what a user hands to ``fit(x, y)`` into one of these, checking
that x and y have one sample count, and ``check_targets(loss, y)`` refuses targets the loss
cannot take (float targets for a class-label loss) with one message naming the argument.
"""
from __future__ import annotations

import numpy as np

# Losses that read integer class indices from the targets (see Model.compile's loss names).
CLASS_LABEL_LOSSES = ("cross_entropy", "nll")

# The target value padded positions carry in SequenceDataset (cross_entropy's ignore_index).
PAD_TARGET = -100


def _as_host_array(a, what: str) -> np.ndarray:
    if hasattr(a, "get") and not isinstance(a, np.ndarray):  # a CuPy array
        a = a.get()
    a = np.asarray(a)
    if a.dtype == object:
        raise TypeError(f"{what} must be a numeric array, got an object array of shape "
                        f"{a.shape} (ragged sequences? use SequenceDataset)")
    if a.dtype.kind == "f":
        return a.astype(np.float32, copy=False)
    if a.dtype.kind in "iub":
        return a if a.dtype == np.uint8 and what.startswith("x") else a.astype(np.int64, copy=False)
    raise TypeError(f"{what} must be a float or integer array, got dtype {a.dtype}")


class TensorDataset:
    """x (N, ...) of any rank and y (N, ...) of any shape, held in host memory."""

    def __init__(self, x, y, name: str = "arrays"):
        x = _as_host_array(x, "x (inputs)")
        y = _as_host_array(y, "y (targets)")
        if x.ndim == 0 or y.ndim == 0:
            raise ValueError(f"x and y need a leading sample axis; got x shape {x.shape}, "
                             f"y shape {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"x and y have different numbers of samples: x has {len(x)} "
                             f"(shape {x.shape}), y has {len(y)} (shape {y.shape}); they must "
                             f"match along axis 0")
        self.x, self.y, self.name = x, y, name

    class_names = None  # (class-label data sets name their classes; arrays do not)
    is_segmentation = False  # no per-pixel class masks (what the CLI's metrics ask)

    @property
    def input_shape(self) -> tuple:
        """The shape of one input sample, e.g. (T,) token ids or (C, H, W) pixels."""
        return tuple(int(d) for d in self.x.shape[1:])

    # The loader and older code read .images/.labels.
    @property
    def images(self) -> np.ndarray:
        return self.x

    @property
    def labels(self) -> np.ndarray:
        return self.y

    def batch(self, indices):
        return self.x[indices], self.y[indices]

    def head(self, n: int) -> "TensorDataset":
        """The first n samples, with this dataset's extra attributes (e.g. vocab_size)."""
        out = TensorDataset(self.x[:n], self.y[:n], self.name)
        for k, v in vars(self).items():
            out.__dict__.setdefault(k, v)
        return out

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        return (f"TensorDataset({self.name!r}, x {self.x.shape} {self.x.dtype}, "
                f"y {self.y.shape} {self.y.dtype})")


class SequenceDataset:
    """Variable-length sequences, padded per batch.

    sequences: list of N arrays, each (T_i, ...) with T_i >= 1 (token ids (T_i,) or feature
    vectors (T_i, F)). targets: (N, ...) one target per sequence, or a list of N arrays
    (T_i, ...) one target per step (padded with ``PAD_TARGET``, which cross_entropy ignores).
    A batch is ``((padded (n, T_max, ...), lengths (n,) int64), targets)``; a recurrent layer
    given ``lengths`` leaves the padded steps out (see mpinet.nn.recurrent).

    Data parallelism: with one target per sequence, N ranks train exactly as one rank does.
    With per-step targets the loss of a batch is the mean over its valid steps and batches are
    weighted by their sequence counts, so N ranks weigh steps slightly differently from one
    rank (each rank's share is its own token mean).
    """

    def __init__(self, sequences, targets, pad_value=0, name: str = "sequences"):
        seqs = [_as_host_array(s, f"x[{i}] (sequence)") for i, s in enumerate(sequences)]
        if not seqs:
            raise ValueError("SequenceDataset: got no sequences")
        for i, s in enumerate(seqs):
            if s.ndim == 0 or len(s) == 0:
                raise ValueError(f"SequenceDataset: sequence {i} has shape {s.shape}; every "
                                 f"sequence needs at least one step")
            if s.shape[1:] != seqs[0].shape[1:] or s.dtype != seqs[0].dtype:
                raise ValueError(f"SequenceDataset: sequence {i} has step shape {s.shape[1:]} "
                                 f"{s.dtype}, sequence 0 has {seqs[0].shape[1:]} "
                                 f"{seqs[0].dtype}; all steps must be alike")
        self.per_step = isinstance(targets, (list, tuple))
        if self.per_step:
            ys = [_as_host_array(t, f"y[{i}] (targets)") for i, t in enumerate(targets)]
            bad = [i for i, (s, t) in enumerate(zip(seqs, ys, strict=False)) if len(t) != len(s)]
            if len(ys) != len(seqs) or bad:
                raise ValueError(f"SequenceDataset: per-step targets must be one array per "
                                 f"sequence with the sequence's length; got {len(ys)} for "
                                 f"{len(seqs)} sequences" + (f", lengths differ at {bad[:5]}"
                                                             if bad else ""))
        else:
            ys = _as_host_array(targets, "y (targets)")
            if len(ys) != len(seqs):
                raise ValueError(f"SequenceDataset: {len(seqs)} sequences but y has {len(ys)} "
                                 f"targets (shape {ys.shape}); they must match")
        self.sequences, self.targets = seqs, ys
        self.lengths = np.array([len(s) for s in seqs], dtype=np.int64)
        self.pad_value, self.name = pad_value, name

    def batch(self, indices):
        indices = np.asarray(indices, dtype=np.int64)
        lengths = self.lengths[indices]
        t_max = int(lengths.max()) if len(indices) else 1
        first = self.sequences[0]
        x = np.full((len(indices), t_max) + first.shape[1:], self.pad_value, dtype=first.dtype)
        for row, i in enumerate(indices):
            x[row, :lengths[row]] = self.sequences[i]
        if self.per_step:
            t0 = self.targets[0]
            y = np.full((len(indices), t_max) + t0.shape[1:], PAD_TARGET, dtype=t0.dtype)
            for row, i in enumerate(indices):
                y[row, :lengths[row]] = self.targets[i]
        else:
            y = self.targets[indices]
        return (x, lengths), y

    @property
    def labels(self):
        return self.targets if not self.per_step else None

    def __len__(self) -> int:
        return len(self.sequences)

    def __repr__(self) -> str:
        return (f"SequenceDataset({self.name!r}, n={len(self)}, lengths "
                f"{int(self.lengths.min())}..{int(self.lengths.max())})")


def is_dataset(obj) -> bool:
    return hasattr(obj, "__len__") and (hasattr(obj, "batch") or hasattr(obj, "images")
                                        or hasattr(obj, "read_batch"))  # file-backed (streaming)


def as_dataset(x, y=None, what: str = "fit"):
    """A dataset from ``fit(x, y)``-style arguments: a dataset alone, or arrays x and y."""
    if is_dataset(x):
        if y is not None:
            raise ValueError(f"{what}: got a dataset ({type(x).__name__}) and also y; pass the "
                             f"targets inside the dataset, or arrays x and y")
        return x
    if isinstance(x, tuple) and len(x) == 2 and y is None:  # validation_data=(x, y)
        x, y = x
    if y is None:
        raise ValueError(f"{what}: x is an array of shape {np.shape(x)} but y (the targets) was "
                         f"not given; call {what}(x, y, ...) or pass a dataset")
    try:
        return TensorDataset(x, y)
    except ValueError as e:
        raise ValueError(f"{what}(x, y): {e}") from None


def has_padded_targets(dataset) -> bool:
    """True when the dataset's batches carry PAD_TARGET at padded steps (per-step targets of a
    SequenceDataset), which the class-label losses must then ignore."""
    return bool(getattr(dataset, "per_step", False))


def dataset_targets(dataset):
    """The targets array of a dataset when it has one in memory (None otherwise)."""
    for attr in ("y", "labels", "targets"):
        t = getattr(dataset, attr, None)
        if isinstance(t, np.ndarray):
            return t
    return None


def check_targets(loss, dataset, what: str = "fit") -> None:
    """Refuse float targets for a class-label loss, naming the argument, dtype and shape."""
    if not isinstance(loss, str) or loss not in CLASS_LABEL_LOSSES:
        return
    y = dataset_targets(dataset)
    if y is not None and y.dtype.kind == "f":
        raise TypeError(f"{what}: y (targets) has float dtype {y.dtype} and shape {y.shape}, "
                        f"but loss={loss!r} needs integer class labels; for real-valued targets "
                        f"compile with a regression loss (e.g. loss='mse'), or convert class "
                        f"labels explicitly with y.astype('int64')")


def regression_target(out, y, loss_name: str):
    """Targets for an elementwise loss, shaped like the output: (N,) targets for an (N, 1)
    output are reshaped; anything else must match the output's shape exactly."""
    if tuple(y.shape) != tuple(out.shape):
        if y.size != out.size or y.shape[:1] != out.shape[:1]:
            raise ValueError(f"loss {loss_name!r}: y (targets) of shape {tuple(y.shape)} does "
                             f"not fit the model output of shape {tuple(out.shape)}")
        y = y.reshape(out.shape)
    return y.astype(out.dtype, copy=False)


def num_samples(x) -> int:
    """Samples in a batch: x is an array (N, ...) or a tuple (padded (N, ...), lengths, ...)."""
    return int((x[0] if isinstance(x, tuple) else x).shape[0])


def take_rows(x, start: int, stop: int):
    """Samples start..stop of a batch (of each array of a tuple batch)."""
    return tuple(a[start:stop] for a in x) if isinstance(x, tuple) else x[start:stop]


def model_input(x):
    """A host array given to predict: floats as float32, integer ids kept as int64."""
    x = np.asarray(x)
    return x.astype(np.float32, copy=False) if x.dtype.kind == "f" or x.dtype == np.uint8 \
        else x.astype(np.int64, copy=False)
