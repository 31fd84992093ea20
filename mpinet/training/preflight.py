"""Checks of a training run that need the file system, the devices or the ranks' layout, made
before any data is read or any step is taken, so a run that would fail late (an unwritable
metrics file after the first window, an unwritable weights file after all training, a resume
from checkpoints that are all damaged) fails at once with one line instead.
"""
from __future__ import annotations

import os
import tempfile
import warnings

from mpinet.training.config import ConfigError, TrainConfig


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def _can_create_in(directory: str) -> str:
    """"" when a file can be created in ``directory`` (tried for real: permission bits do not
    bind root, read-only mounts do), else the reason."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".mpinet-write-test-", dir=directory)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(probe)
    return ""


def check_writable_dir(option: str, path: str, shown: str | None = None) -> None:
    """``path`` is (or can be made as) a directory we can write into; messages name ``shown``
    (default ``path``)."""
    shown = path if shown is None else shown
    base = _nearest_existing(path)
    if not os.path.isdir(base):
        raise ConfigError(f"{option} {shown!r} cannot be created: {base!r} is a file, not a "
                          f"directory; choose another path")
    why = _can_create_in(base)
    if why:
        raise ConfigError(f"{option} {shown!r} is not writable ({base!r}: {why}); choose a "
                          f"path you can write to")


def check_writable_file(option: str, path: str) -> None:
    """``path`` is a file we can write (or create); checked without changing it."""
    if os.path.isdir(path):
        raise ConfigError(f"{option} {path!r} is a directory; give a file path")
    if os.path.exists(path):
        try:
            with open(path, "ab"):
                pass
        except OSError as e:
            raise ConfigError(f"{option} {path!r} is not writable ({e.strerror}); choose "
                              f"another file") from None
        return
    check_writable_dir(option, os.path.dirname(os.path.abspath(path)), shown=path)


def check_output_paths(cfg: TrainConfig) -> None:
    if cfg.checkpoint_dir:
        check_writable_dir("--checkpoint-dir", cfg.checkpoint_dir)
    if cfg.metrics:
        check_writable_file("--metrics", cfg.metrics)
    if cfg.save_weights:
        check_writable_file("--save-weights", cfg.save_weights)


def check_device(cfg: TrainConfig, local_size: int, host: str, gpu_count: int) -> None:
    """Refuse device combinations that would fail later with a raw library error."""
    if cfg.comm in ("nccl",) and cfg.device == "cpu":
        raise ConfigError("--comm nccl needs GPUs (NCCL moves GPU arrays), but --device is cpu; "
                          "use --comm mpi (or auto) on the CPU, or --device gpu")
    if cfg.device == "gpu" and gpu_count == 0:
        raise ConfigError("--device gpu, but no usable CUDA GPU was found (no device, driver or "
                          "CuPy); use --device cpu or auto")
    if cfg.comm == "nccl" and cfg.device == "auto" and gpu_count == 0:
        raise ConfigError("--comm nccl needs GPUs, but no usable CUDA GPU was found; use "
                          "--comm mpi (or auto) on the CPU")


def check_gpu_sharing(cfg: TrainConfig, placements: list) -> None:
    """``placements[r]`` = (host, PCI bus id of the GPU rank r would use, or None). Two ranks on
    one GPU is refused up front (NCCL would fail with NCCL_ERROR_INVALID_USAGE); every rank sees
    the same list, so every rank refuses alike."""
    if cfg.device == "cpu":
        return
    users: dict = {}
    for rank, (host, gpu) in enumerate(placements):
        if gpu is not None:
            users.setdefault((host, gpu), []).append(rank)
    shared = [(key, ranks) for key, ranks in users.items() if len(ranks) > 1]
    if not shared:
        return
    (host, gpu), ranks = shared[0]
    on_host = [r for r, (h, _) in enumerate(placements) if h == host]
    gpus = len({g for h, g in placements if h == host and g is not None})
    raise ConfigError(f"{len(on_host)} ranks on host {host} but it has only {gpus} GPU(s): ranks "
                      f"{', '.join(map(str, ranks))} would share GPU {gpu}, and NCCL needs one "
                      f"GPU per rank. Start at most {gpus} rank(s) per node (e.g. mpirun -n "
                      f"{gpus}, or srun --ntasks-per-node={gpus}), or train on the CPU with "
                      f"--device cpu")


def check_resume(cfg: TrainConfig) -> None:
    """A resume that cannot work is refused now, as one line (rank 0 reads the files)."""
    # Imported here: the checkpoint package is only needed when resuming.
    from mpinet import checkpoint
    from mpinet.checkpoint.store import checkpoint_dirs

    if not cfg.resume:
        return
    if cfg.resume != "auto":
        try:
            checkpoint.verify(cfg.resume)
        except checkpoint.CheckpointError as e:
            raise ConfigError(f"--resume {cfg.resume!r}: {e}") from None
        return
    directory = cfg.checkpoint_dir
    if not directory or not os.path.isdir(directory):
        return  # nothing saved yet: a first run starts fresh
    candidates = sorted(checkpoint_dirs(directory), reverse=True)
    if not candidates:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reasons are reported below, once
        if checkpoint.latest(directory) is not None:
            return
    reasons = []
    for _, path in candidates[:3]:
        try:
            checkpoint.verify(path)
        except checkpoint.CheckpointError as e:
            reasons.append(str(e).split(";")[0])
    raise ConfigError(f"--resume auto: all {len(candidates)} checkpoint(s) in {directory!r} fail "
                      f"verification ({' | '.join(reasons)}); to start fresh, move them away "
                      f"(e.g. mv {directory} {directory.rstrip('/')}.damaged) or choose another "
                      f"--checkpoint-dir; to use one anyway, pass it with --resume PATH")
