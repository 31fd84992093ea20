"""The training run's configuration: one typed, validated, immutable ``TrainConfig``.

Every key has a type, a default and a rule; a bad value (NaN learning rate, negative sample
count, ``"abc"`` epochs from a config file) is refused with one ``ConfigError`` line naming the
key (as the command-line flag) and the value. Unknown keys in a config file are refused naming
the closest valid key. Sources, later ones winning: defaults < ``--config`` file < flags.

    cfg = TrainConfig.from_args(vars(parser.parse_args()))   # "config" key: the file to read
    cfg.lr, cfg["lr"], dict(cfg)                             # attribute, item, plain dict
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A bad flag or config value; reported once, by rank 0, before training starts."""


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


# Rules: (kind, detail). kinds: "int" (detail: minimum), "float" (detail: (low, high, low
# inclusive, high inclusive)), "choice" (detail: allowed values), "bool", "path", "str",
# "list". Optional (None allowed) keys are in OPTIONAL.
_RULES: dict[str, tuple] = {
    "model": ("str", None), "dataset": ("str", None), "data_dir": ("path", None),
    "epochs": ("int", 1), "batch_size": ("int", 1), "lr": ("float", (0, math.inf, False, False)),
    "optimizer": ("choice", ("sgd", "adam", "adamw")),
    "momentum": ("float", (0, math.inf, True, False)),
    "weight_decay": ("float", (0, math.inf, True, False)), "nesterov": ("bool", None),
    "schedule": ("choice", ("constant", "step", "cosine", "exponential", "multistep",
                            "onecycle", "polynomial", "plateau")), "warmup_steps": ("int", 0),
    "scale_lr": ("bool", None), "base_batch": ("int", 1),
    "label_smoothing": ("float", (0, 1, True, False)),
    "precision": ("choice", ("fp32", "bf16", "fp16")),
    "comm": ("choice", ("auto", "mpi", "nccl", "hierarchical")),
    "device": ("choice", ("auto", "cpu", "gpu")),
    "dp_mode": ("choice", ("backward", "forward", "sync")),
    "bucket_mb": ("float", (0, math.inf, False, False)), "grad_dtype": ("choice", ("bf16", "fp16")),
    "accumulation_steps": ("int", 1), "sync_batchnorm": ("bool", None),
    # --augment: a preset of mpinet.data.presets, "auto" (the data set's kind), or a bool
    # (true = "auto", as config files wrote it before the presets).
    "augment": ("bool_or_choice", ("auto", "digits", "photo", "microscopy", "none")),
    "checkpoint_dir": ("path", None), "checkpoint_every": ("int", 0),
    "keep_checkpoints": ("int", 1), "resume": ("path", None), "seed": ("int", 0),
    "metrics": ("path", None), "log_every": ("int", 1), "train_samples": ("int", 1),
    "quiet": ("bool", None), "save_weights": ("path", None), "model_opt": ("list", None),
    "cuda_graph": ("bool", None), "cudnn_benchmark": ("bool", None),
    "deterministic": ("bool", None),
    "comm_timeout": ("float", (0, math.inf, False, False)),
    "straggler_warn": ("float", (0, math.inf, True, False)),
    "preflight": ("bool", None),
    # gradient clipping and sequence models (issue 18)
    "clip_norm": ("float", (0, math.inf, False, False)),
    "clip_value": ("float", (0, math.inf, False, False)),
    "seq_len": ("int", 1), "sample": ("int", 0),
    "temperature": ("float", (0, math.inf, True, False)), "sample_prompt": ("str", None),
    "save_model": ("path", None),
    "threads": ("int", 1), "workers": ("int", 0),
    "mask_values": ("str", None), "class_weights": ("str", None),
    "loss": ("choice", ("cross_entropy", "dice", "bce", "dice+ce")),
}
OPTIONAL = {"data_dir", "grad_dtype", "checkpoint_dir", "resume", "metrics", "train_samples",
            "save_weights", "model_opt", "comm_timeout", "straggler_warn", "save_model",
            "threads", "workers", "mask_values", "class_weights", "loss", "clip_norm",
            "clip_value"}


def check_value(key: str, value, where: str = ""):
    """``value`` converted to ``key``'s type, or ConfigError naming the key and the value."""
    kind, detail = _RULES[key]
    name = f"{where}key {key!r} ({flag(key)})" if where else flag(key)
    if value is None:
        if key in OPTIONAL:
            return None
        raise ConfigError(f"{name} must be set, got null")
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: {value!r} is not an integer")
        if value < detail:
            raise ConfigError(f"{name} must be {'> 0' if detail == 1 else f'>= {detail}'}, "
                              f"got {value}")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}: {value!r} is not a number")
        value = float(value)
        lo, hi, lo_ok, hi_ok = detail
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value}")
        if value < lo or (value == lo and not lo_ok) or value > hi or (value == hi and not hi_ok):
            bound = f"{'>=' if lo_ok else '>'} {lo:g}"
            if hi != math.inf:
                bound += f" and {'<=' if hi_ok else '<'} {hi:g}"
            raise ConfigError(f"{name} must be {bound}, got {value:g}")
        return value
    if kind == "choice":
        if value not in detail:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(detail)}")
        return value
    if kind == "bool_or_choice":
        if not isinstance(value, bool) and value not in detail:
            raise ConfigError(f"{name}: {value!r} is not true, false or one of "
                              f"{', '.join(detail)}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: {value!r} is not true or false")
        return value
    if kind in ("str", "path"):
        if not isinstance(value, str) or (kind == "path" and not value):
            what = "path" if kind == "path" else "string"
            raise ConfigError(f"{name}: {value!r} is not a {what}")
        return value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}: {value!r} is not a list of strings")
    return list(value)


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mlp"
    dataset: str = "digits"
    data_dir: str | None = None
    epochs: int = 30
    batch_size: int = 32
    lr: float = 0.05
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    nesterov: bool = False
    schedule: str = "constant"
    warmup_steps: int = 0
    scale_lr: bool = False
    base_batch: int = 256
    label_smoothing: float = 0.0
    precision: str = "fp32"
    comm: str = "auto"
    device: str = "auto"
    dp_mode: str = "backward"
    bucket_mb: float = 25.0
    grad_dtype: str | None = None
    accumulation_steps: int = 1
    augment: bool | str = False
    sync_batchnorm: bool = False
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    keep_checkpoints: int = 3
    resume: str | None = None
    seed: int = 0
    metrics: str | None = None
    log_every: int = 10
    train_samples: int | None = None
    quiet: bool = False
    save_weights: str | None = None
    model_opt: list | None = field(default=None)
    cuda_graph: bool = False
    cudnn_benchmark: bool = False
    deterministic: bool = False
    # Seconds a collective may wait before the job is aborted (None: $MPINET_COMM_TIMEOUT).
    comm_timeout: float | None = None
    # Warn when the slowest rank runs this many seconds per logging window behind the others.
    straggler_warn: float | None = None
    # Check hosts, GPUs, versions, network and allreduce bandwidth before training
    # (mpinet.comm.check).
    preflight: bool = False
    # Gradient clipping on the reduced gradient (None: none), and sequence models: characters
    # per training window of a text data set, characters to sample after training, sampling
    # temperature and prompt.
    clip_norm: float | None = None
    clip_value: float | None = None
    seq_len: int = 128
    sample: int = 0
    temperature: float = 0.8
    sample_prompt: str = "def "
    # The model file written at the end (None: CHECKPOINT_DIR/model.mpinet if a dir is given).
    save_model: str | None = None
    # BLAS threads per rank (None: mpinet.threads decides) and decode workers per rank.
    threads: int | None = None
    workers: int | None = None
    # Segmentation: mask pixel values per class, the loss and per-class weights (strings as
    # on the command line: "0,128,255", "1,2").
    mask_values: str | None = None
    loss: str | None = None
    class_weights: str | None = None

    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = check_value(f.name, getattr(self, f.name))
            object.__setattr__(self, f.name, value)

    # Mapping face, so ``cfg["lr"]`` and ``dict(cfg)`` work where a dict was used before.
    def __getitem__(self, key: str):
        if key not in _RULES:
            raise KeyError(key)
        return getattr(self, key)

    def keys(self):
        return [f.name for f in dataclasses.fields(self)]

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.keys()}

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_file(cls, path: str) -> dict:
        """The checked values of a JSON or TOML file (keys as the long flags, '-' or '_')."""
        return read_config_file(path)

    @classmethod
    def from_args(cls, args: dict) -> "TrainConfig":
        """Defaults < the file named by ``args["config"]`` < the other non-None ``args``."""
        args = dict(args)
        values = {}
        path = args.pop("config", None)
        if path:
            values.update(read_config_file(path))
        values.update({k: v for k, v in args.items() if v is not None})
        return cls(**values)


DEFAULTS = TrainConfig().as_dict()


def read_config_file(path: str) -> dict:
    is_toml = path.endswith(".toml")
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path!r}: no such file")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        if is_toml:
            import tomllib

            data = tomllib.loads(raw.decode())
        else:
            data = json.loads(raw)
    except Exception as e:
        raise ConfigError(f"--config {path!r} is not valid {'TOML' if is_toml else 'JSON'}: "
                          f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path!r} holds a {type(data).__name__}; it must be a "
                          f'{"TOML table" if is_toml else "JSON object"} of flag: value pairs, '
                          f'e.g. {{"epochs": 5, "lr": 0.1}}')
    data = {str(k).replace("-", "_"): v for k, v in data.items()}
    for key in data:
        if key not in _RULES:
            close = difflib.get_close_matches(key, list(_RULES), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else \
                f"; valid keys: {', '.join(sorted(_RULES))}"
            raise ConfigError(f"--config {path!r}: unknown key {key!r}{hint}")
    return {k: check_value(k, v, where=f"--config {path!r}: ") for k, v in data.items()}
