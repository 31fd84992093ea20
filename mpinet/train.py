"""``python -m mpinet.train``: train a zoo model on a data set, on 1 or N ranks.

    python -m mpinet.train                         # MLP on scikit-learn's digits, no download
    mpirun -n 2 python -m mpinet.train             # the same, data-parallel on 2 ranks
    mpirun -n 8 python -m mpinet.train --model resnet18 --dataset cifar10 --data-dir DIR \\
        --epochs 30 --batch-size 128 --lr 0.1 --schedule cosine --warmup-steps 500 --precision bf16

Every rank parses the same flags. Configuration errors are found on every rank before any
training, gathered, and reported once by rank 0 (exit code 2) — no traceback per rank, no hang.
Any later uncaught exception on any rank aborts the whole job with that rank's traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from mpinet.training.config import DEFAULTS, ConfigError, TrainConfig  # noqa: F401 - re-exported


class RankParser(argparse.ArgumentParser):
    """argparse that speaks once per job: only rank 0 prints (help, usage errors), and a usage
    error is one line, exit code 2, on every rank (each rank parses the same flags)."""

    def __init__(self, *args, rank: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank = rank

    def _print_message(self, message, file=None):
        if self.rank == 0:
            super()._print_message(message, file)

    def error(self, message):
        if self.rank == 0:
            print(f"mpinet.train: error: {message} (see --help)", file=sys.stderr, flush=True)
        sys.exit(2)


def build_parser(rank: int = 0) -> argparse.ArgumentParser:
    p = RankParser(
        rank=rank,
        prog="python -m mpinet.train",
        description="Train an mpinet zoo model, data-parallel under mpirun/srun. With no flags: "
                    "an MLP on scikit-learn's bundled digits (no download).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--config", help="JSON or TOML file of flag values (keys as the long flags, '-' or '_'); "
                       "flags on the command line override it")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="zoo model name (see mpinet.models.available_models())")
    g.add_argument("--dataset", help="data set name: digits, fashion-mnist, mnist, cifar10, "
                                     "cifar100, image-folder, mask-folder, synthetic, "
                                     "synthetic-segmentation")
    g.add_argument("--data-dir", help="directory of the data set's files")
    g.add_argument("--mask-values", help="mask-folder: comma-separated mask pixel values, the "
                                         "k-th is class k (default: 0 background, else foreground)")
    g.add_argument("--train-samples", type=int, help="use only the first N training samples")
    g.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="extra model option, repeatable (e.g. base_width=16 for unet; values "
                        "parsed as JSON when they can be, else kept as strings)")
    g.add_argument("--workers", type=int,
                   help="decode processes per rank for image and mask folders (default: the "
                        "rank's cores minus one, from the thread budget; 0 decodes in the loader "
                        "thread)")
    g.add_argument("--augment", nargs="?", const="auto", default=None,
                   choices=["auto", "digits", "photo", "microscopy", "none"],
                   help="augmentation preset (mpinet.data.presets); alone: the data set's kind "
                        "(digits: normalization only; photo: crop + horizontal flip; "
                        "microscopy: flips and 90-degree rotations, masks too)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="samples per rank per step")
    g.add_argument("--lr", type=float, help="learning rate (before --scale-lr)")
    g.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--nesterov", action="store_true", default=None)
    g.add_argument("--schedule", choices=["constant", "step", "cosine", "exponential",
                                          "multistep", "onecycle", "polynomial", "plateau"])
    g.add_argument("--warmup-steps", type=int, help="linear LR warmup steps")
    g.add_argument("--scale-lr", action="store_true", default=None,
                   help="linear scaling rule: lr * global_batch / --base-batch")
    g.add_argument("--base-batch", type=int)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--loss", choices=["cross_entropy", "dice", "bce", "dice+ce"],
                   help="segmentation data: the loss (default cross_entropy); "
                        "see mpinet.ops.segmentation_loss")
    g.add_argument("--class-weights", help="segmentation: comma-separated weight per class")
    g.add_argument("--accumulation-steps", type=int,
                   help="split each rank's batch into this many micro-batches (no comm between)")
    g = p.add_argument_group("gradient clipping and sequence models")
    g.add_argument("--clip-norm", type=float, help="clip the reduced gradient to this global "
                                                   "L2 norm before each update")
    g.add_argument("--clip-value", type=float, help="clamp each reduced gradient element to "
                                                    "[-v, v] before each update")
    g.add_argument("--seq-len", type=int, help="characters per training sequence (text data "
                                               "sets, e.g. --dataset python-source)")
    g.add_argument("--sample", type=int, help="after training, print this many characters "
                                              "sampled from a language model (rank 0)")
    g.add_argument("--temperature", type=float, help="sampling temperature for --sample")
    g.add_argument("--sample-prompt", help="text the --sample continues")
    g = p.add_argument_group("parallelism and precision")
    g.add_argument("--comm", choices=["auto", "mpi", "nccl", "hierarchical"])
    g.add_argument("--device", choices=["auto", "cpu", "gpu"])
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"])
    g.add_argument("--dp-mode", choices=["backward", "forward", "sync"],
                   help="when gradients are reduced: overlapped with backprop (backward), "
                        "waited per layer before its next forward (forward, cxxnet style), or "
                        "after backprop (sync)")
    g.add_argument("--threads", type=int,
                   help="BLAS/OpenMP threads per rank (default: OMP_NUM_THREADS if set, else the "
                        "cores each rank owns on its node; see mpinet.threads)")
    g.add_argument("--bucket-mb", type=float, help="gradient bucket size in MiB")
    g.add_argument("--grad-dtype", choices=["bf16", "fp16"], help="compress gradients on the wire")
    g.add_argument("--sync-batchnorm", action="store_true", default=None,
                   help="batch statistics over all ranks")
    g.add_argument("--cuda-graph", action="store_true", default=None,
                   help="GPU: replay each training step as one CUDA graph after a few eager "
                        "steps (fp32/bf16, comm nccl, no --sync-batchnorm; refused otherwise)")
    g.add_argument("--cudnn-benchmark", action="store_true", default=None,
                   help="GPU: time cuDNN's candidate plans once per convolution shape and keep "
                        "the fastest (like torch.backends.cudnn.benchmark; costs tens of ms per "
                        "shape at start)")
    g.add_argument("--deterministic", action="store_true", default=None,
                   help="GPU: never choose cuDNN engines marked non-deterministic, so a run (and "
                        "a resumed run) repeats bit for bit; may be slower")
    g.add_argument("--preflight", action="store_true", default=None,
                   help="before training, check every rank's host, GPU, library versions and "
                        "network, and time the communicator's allreduce (mpinet.comm.check); "
                        "exit 2 if a check fails")
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--checkpoint-dir")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (0: per epoch)")
    g.add_argument("--keep-checkpoints", type=int)
    g.add_argument("--resume", help="'auto' (newest good checkpoint in --checkpoint-dir) or a path")
    g.add_argument("--save-weights", help="write the final weights (safetensors) here")
    g.add_argument("--save-model", metavar="PATH",
                   help="write the model file here at the end (architecture, weights, "
                        "normalisation, class names; mpinet.load_model / python -m "
                        "mpinet.predict read it); default: CHECKPOINT_DIR/model.mpinet when "
                        "--checkpoint-dir is given")
    g.add_argument("--seed", type=int)
    g.add_argument("--metrics", help="JSON-lines metrics file (rank 0 writes)")
    g.add_argument("--log-every", type=int)
    g.add_argument("--quiet", action="store_true", default=None, help="no progress bar")
    add_reliability_flags(p)
    return p


def add_reliability_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reliability (README: Reliability)")
    g.add_argument("--comm-timeout", type=float, metavar="SECONDS",
                   help="abort the job, naming the missing ranks, their host and the op, when a "
                        "collective waits longer than this (default: $MPINET_COMM_TIMEOUT, else "
                        "600). A rank that is stopped, dead or cut off is named sooner, after "
                        "$MPINET_COMM_HEARTBEAT_TIMEOUT (default 30) s without a heartbeat")
    g.add_argument("--straggler-warn", type=float, metavar="SECONDS",
                   help="warn when the slowest rank runs more than this many seconds behind the "
                        "median rank in a logging window (the slowest rank and its lag are "
                        "logged every window: slowest_rank, straggler_s)")


def load_config(argv=None, rank: int = 0) -> TrainConfig:
    """Defaults < --config file < command-line flags, typed and checked (ConfigError)."""
    return TrainConfig.from_args(vars(build_parser(rank).parse_args(argv)))


def validate(cfg: dict) -> None:
    """Everything that can be checked before touching data or devices."""
    from mpinet.data.registry import DATASET_NAMES
    from mpinet.models import available_models

    if cfg["model"] not in available_models():
        raise ConfigError(f"--model {cfg['model']!r} is unknown; choose one of: "
                          f"{', '.join(available_models())}")
    if cfg["dataset"] not in DATASET_NAMES:
        raise ConfigError(f"--dataset {cfg['dataset']!r} is unknown; choose one of: "
                          f"{', '.join(DATASET_NAMES)}")
    if cfg["data_dir"] is not None and not os.path.isdir(cfg["data_dir"]):
        raise ConfigError(f"--data-dir {cfg['data_dir']!r} does not exist or is not a directory")
    if cfg["checkpoint_every"] and not cfg["checkpoint_dir"]:
        raise ConfigError("--checkpoint-every needs --checkpoint-dir")
    if cfg["resume"] == "auto" and not cfg["checkpoint_dir"]:
        raise ConfigError("--resume auto needs --checkpoint-dir to look in")
    if cfg["resume"] not in (None, "auto") and not os.path.exists(cfg["resume"]):
        raise ConfigError(f"--resume {cfg['resume']!r}: no such checkpoint")
    if cfg["save_model"]:
        _check_writable_file("--save-model", cfg["save_model"])
    _validate_sequence_flags(cfg)


def _check_writable_file(flag: str, path: str) -> None:
    """Refuse before training a path the end of the run could not write."""
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path!r} is a directory; give a file name, e.g. "
                          f"{os.path.join(path, 'model.mpinet')!r}")
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(folder):  # makedirs will create the missing part
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise ConfigError(f"{flag} {path!r}: cannot write there ({folder!r} is "
                          f"{'not a directory' if not os.path.isdir(folder) else 'not writable'})")


def _validate_sequence_flags(cfg: dict) -> None:
    """Text data sets need a language model, and --sample one on a text data set (the
    values themselves are checked by TrainConfig)."""
    from mpinet.data.registry import dataset_options

    text = "seq_len" in dataset_options(cfg["dataset"])
    language_models = ("char-lstm", "char-transformer")
    if text and cfg["model"] not in language_models:
        raise ConfigError(f"--dataset {cfg['dataset']} holds character sequences; train a "
                          f"language model on it (--model {' or '.join(language_models)}), "
                          f"not --model {cfg['model']}")
    if cfg["sample"] and (not text or cfg["model"] not in language_models):
        raise ConfigError(f"--sample needs a language model on a text data set (--model "
                          f"char-lstm --dataset python-source), got --model {cfg['model']} "
                          f"--dataset {cfg['dataset']}")


def _pick_model_opts(cfg: dict, train) -> dict:
    if hasattr(train, "vocab_size"):  # text: token ids in, one class per vocabulary entry
        opts = {"num_classes": train.vocab_size}
    else:
        c, h, _ = train.input_shape
        opts = {"num_classes": train.num_classes, "in_channels": c, "input_size": h}
    for item in cfg["model_opt"] or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"--model-opt {item!r} must look like KEY=VALUE, e.g. base_width=16")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts


def _pick_loss(cfg: dict, train):
    """cross_entropy, or a segmentation loss (--loss, --class-weights) for per-pixel labels."""
    if cfg["loss"] is None and cfg["class_weights"] is None:
        return "cross_entropy"
    if not train.is_segmentation:
        raise ConfigError("--loss and --class-weights are for segmentation data (per-pixel "
                          f"labels); --dataset {cfg['dataset']} has one label per image")
    from mpinet.ops.segmentation_loss import segmentation_loss

    weights = None
    if cfg["class_weights"] is not None:
        try:
            weights = [float(w) for w in str(cfg["class_weights"]).split(",")]
        except ValueError:
            raise ConfigError(f"--class-weights {cfg['class_weights']!r} must be numbers "
                              "separated by commas, one per class") from None
        if len(weights) != train.num_classes:
            raise ConfigError(f"--class-weights has {len(weights)} values for "
                              f"{train.num_classes} classes")
    return segmentation_loss(cfg["loss"] or "cross_entropy", weights)


def apply_device_options(cfg: dict) -> None:
    """Settings of the GPU paths that the config selects (no effect on the CPU)."""
    from mpinet.kernels import cudnn

    if cfg["cudnn_benchmark"]:
        cudnn.benchmark = True
    if cfg["deterministic"]:
        cudnn.deterministic = True


def setup(cfg: dict, comm):
    """Data, model, compiled Model; raises ConfigError/ValueError/OSError on bad input."""
    from mpinet.optim.factory import build_schedule
    from mpinet.data.registry import dataset_options, get_dataset
    from mpinet.training import Model, check_can_train
    from mpinet.models import build_model
    from mpinet.nn import init

    # uint8 where the reader offers it: a quarter of the host memory and host-to-device copy.
    opts = {"raw": True} if "raw" in dataset_options(cfg["dataset"]) else {}
    if "stream" in dataset_options(cfg["dataset"]):  # file trees: decode per batch, not up front
        opts["stream"] = True
    if cfg["mask_values"] is not None:
        if "mask_values" not in dataset_options(cfg["dataset"]):
            raise ConfigError(f"--mask-values is for --dataset mask-folder, not {cfg['dataset']}")
        try:
            opts["mask_values"] = [int(v) for v in str(cfg["mask_values"]).split(",")]
        except ValueError:
            raise ConfigError(f"--mask-values {cfg['mask_values']!r} must be integers separated "
                              "by commas, e.g. 0,128,255") from None
    if "seq_len" in dataset_options(cfg["dataset"]):  # text data sets (issue 18)
        opts["seq_len"] = int(cfg["seq_len"])
    train = get_dataset(cfg["dataset"], "train", data_dir=cfg["data_dir"], **opts)
    test = get_dataset(cfg["dataset"], "test", data_dir=cfg["data_dir"], **opts)
    if cfg["train_samples"] and hasattr(train, "subset"):  # file-backed (mpinet.data.streaming)
        train = train.subset(int(cfg["train_samples"]))
    elif cfg["train_samples"] and hasattr(train, "head"):  # TensorDataset (e.g. text)
        train = train.head(int(cfg["train_samples"]))
    elif cfg["train_samples"]:
        from mpinet.data.dataset import ArrayDataset

        n = int(cfg["train_samples"])
        train = ArrayDataset(train.images[:n], train.labels[:n], train.num_classes, train.name,
                             class_names=train.class_names)
    check_can_train(train, comm.size, cfg["batch_size"], cfg["accumulation_steps"])
    if cfg["workers"] and not hasattr(train, "read_batch"):
        raise ConfigError(f"--workers {cfg['workers']}: decode workers read image files, but "
                          f"--dataset {cfg['dataset']} is held in memory; drop --workers")
    init.manual_seed(cfg["seed"])
    net = build_model(cfg["model"], **_pick_model_opts(cfg, train))
    # Same initial weights everywhere (rank 0's are broadcast anyway), but each rank its own
    # dropout masks: the ranks see different samples and must not share their noise.
    from mpinet.ops import dropout

    dropout.manual_seed(cfg["seed"] * 100_003 + comm.rank)
    if cfg["sync_batchnorm"]:
        from mpinet.parallel.sync_batchnorm import convert_sync_batchnorm

        net = convert_sync_batchnorm(net, comm)
    model = Model(net, comm)
    model.config = dict(cfg)  # recorded in each checkpoint's meta.json

    global_batch = cfg["batch_size"] * comm.size
    lr = cfg["lr"] * global_batch / cfg["base_batch"] if cfg["scale_lr"] else cfg["lr"]
    steps_per_epoch = -(-len(train) // global_batch)
    total_steps = steps_per_epoch * cfg["epochs"]
    model.compile(cfg["optimizer"], loss=_pick_loss(cfg, train), lr=lr, momentum=cfg["momentum"],
                  weight_decay=cfg["weight_decay"], nesterov=cfg["nesterov"],
                  metrics=("iou", "accuracy") if train.is_segmentation else ("accuracy",),
                  schedule=lambda opt: build_schedule(
                      cfg["schedule"], opt, total_steps=total_steps,
                      warmup_steps=cfg["warmup_steps"]),
                  precision=cfg["precision"],
                  label_smoothing=cfg["label_smoothing"], dp_mode=cfg["dp_mode"],
                  bucket_mb=cfg["bucket_mb"], grad_dtype=cfg["grad_dtype"],
                  cuda_graph=bool(cfg["cuda_graph"]),
                  clip_norm=cfg["clip_norm"], clip_value=cfg["clip_value"])
    transform = eval_transform = None
    preset = _augment_preset(cfg)
    if preset != "none":
        from mpinet.data.presets import build_augmentation
        from mpinet.data.streaming import dataset_channel_stats

        mean, std = dataset_channel_stats(train, comm=comm)
        transform, eval_transform = build_augmentation(  # eval: same normalization, no randomness
            preset, train.input_shape, mean, std, seed=cfg["seed"],
            segmentation=train.is_segmentation)
    # What the model file records, and checkpoints carry for --resume.
    from mpinet.data.preprocess import Preprocess

    model.preprocess = Preprocess.from_transform(eval_transform, train.input_shape)
    model.class_names = train.class_names
    return model, train, test, transform, eval_transform


def _augment_preset(cfg: dict) -> str:
    """--augment: a preset name; alone (or true in a config file) the data set's own kind."""
    from mpinet.data.presets import PRESETS, preset_for_dataset

    value = cfg["augment"]
    if value is True or value == "auto":
        return preset_for_dataset(cfg["dataset"])
    if value is False or value is None:
        return "none"
    if value not in PRESETS:
        raise ConfigError(f"--augment {value!r} is unknown; choose one of: {', '.join(PRESETS)} "
                          "(or --augment alone for the data set's kind)")
    return value


def _one_line(e: Exception) -> str:
    text = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())  # one line, whatever the message held


def _all_fine(world, error, limit: float, deadline) -> bool:
    """Collective: False (after rank 0 printed the first error, once) if any rank has one."""
    with deadline("start-up (exchanging configuration errors)", limit, world):
        errors = world.allgather(error)
    if not any(errors):
        return True
    if world.Get_rank() == 0:
        first = next(i for i, e in enumerate(errors) if e)
        where = "" if all(e == errors[first] for e in errors) else f" (on rank {first})"
        print(f"mpinet.train: error{where}: {errors[first]}", file=sys.stderr, flush=True)
    return False


def main(argv=None) -> int:
    from mpinet import backend
    from mpinet.comm import create_communicator, topology
    from mpinet.comm.base import env_timeout_s
    from mpinet.comm.failure import deadline, install_abort_handler
    from mpinet.training import preflight
    from mpi4py import MPI

    from mpinet.training.preemption import PreemptionFlag

    world = MPI.COMM_WORLD
    rank = world.Get_rank()
    install_abort_handler(world)  # from here on, an unexpected error ends every rank
    # Catch SIGTERM/SIGUSR1 from the very start: a signal during start-up or resume must not
    # kill a rank (the job would fail instead of requeueing); fit acts on it at its first step.
    preemption = PreemptionFlag()
    preemption.install()

    # Phase 1, no communication (an error on one rank must not strand the others in a
    # collective): flags, config file, paths, resume.
    error = None
    limit = env_timeout_s()
    try:
        cfg = load_config(argv, rank)
        limit = cfg.comm_timeout or limit
        validate(cfg)
        preflight.check_output_paths(cfg)
        if rank == 0:  # reads (and checksums) the checkpoint files once, not once per rank
            preflight.check_resume(cfg)
    except SystemExit:  # argparse: rank 0 printed one line; every rank exits 2
        raise
    except (ConfigError, ValueError, OSError, KeyError) as e:
        error = _one_line(e)
    if not _all_fine(world, error, limit, deadline):
        return 2

    # Phase 2: devices against ranks (one node's answer may differ from another's, so every
    # rank first learns every rank's GPU, then all judge the same list).
    with deadline("start-up (ranks per node)", limit, world):
        topo = topology.build(world)[0]
    host = MPI.Get_processor_name()
    try:
        gpus = backend.gpu_count() if cfg.device != "cpu" else 0
        mine = (host, backend.gpu_identity(topo.local_rank) if gpus else None)
    except Exception:
        gpus, mine = 0, (host, None)
    with deadline("start-up (GPU placement)", limit, world):
        placements = world.allgather(mine)  # every rank then judges the same list
    try:
        preflight.check_device(cfg, topo.local_size, host, gpus)
        preflight.check_gpu_sharing(cfg, placements)
    except ConfigError as e:
        error = _one_line(e)
    if not _all_fine(world, error, limit, deadline):
        return 2

    # Phase 3: devices, communicator, data and model (collective).
    try:
        from mpinet.threads import apply_thread_budget  # before any compute

        apply_thread_budget(world, cfg["threads"], verbose=not cfg["quiet"])
        backend.select_device(topo.local_rank, cfg["device"])
        apply_device_options(cfg)
        comm = create_communicator(cfg["comm"], world, timeout_s=cfg.comm_timeout)
        model, train, test, transform, eval_transform = setup(cfg, comm)
        model.straggler_warn = cfg.straggler_warn
    except (ConfigError, ValueError, OSError, KeyError) as e:
        error = _one_line(e)
    if not _all_fine(world, error, limit, deadline):
        return 2

    if rank == 0:  # which communicator, why, and which ranks run on which host
        print(f"mpinet: {getattr(comm, 'choice', 'comm=' + comm.name)}", flush=True)
    if cfg["preflight"]:
        from mpinet.comm.check import preflight as run_preflight

        if run_preflight(world, [comm.name], size_mb=16.0, iters=3,
                         out=lambda line: print(line, flush=True)):
            if rank == 0:
                print("mpinet.train: error: the preflight found problems (above); fix them or "
                      "run without --preflight", file=sys.stderr, flush=True)
            return 2
    if rank == 0 and not cfg["quiet"]:
        print(f"mpinet: {cfg['model']} on {cfg['dataset']} ({len(train)} train / {len(test)} "
              f"test), {comm.size} rank(s), comm={comm.name}, device={backend.current()}, "
              f"batch {cfg['batch_size']}/rank, precision {cfg['precision']}", flush=True)
        if comm.size > 1:  # so a launcher's "PID n RUNNING AT host" can be traced to a rank
            places = comm.places()
            shown = ", ".join(f"{r} {h}:{p}" for r, (h, p) in enumerate(places[:16]))
            print(f"mpinet: ranks (host:pid): {shown}{' ...' if len(places) > 16 else ''}",
                  flush=True)
    model.fit(train, epochs=cfg["epochs"], batch_size=cfg["batch_size"], validation_data=test,
              seed=cfg["seed"], transform=transform, eval_transform=eval_transform,
              accumulation_steps=cfg["accumulation_steps"],
              log_every=cfg["log_every"], verbose=not cfg["quiet"], metrics_file=cfg["metrics"],
              checkpoint_dir=cfg["checkpoint_dir"], checkpoint_every=cfg["checkpoint_every"],
              keep_checkpoints=cfg["keep_checkpoints"], resume=cfg["resume"],
              preemption_flag=preemption, workers=cfg["workers"])
    if model.preempted:
        return 0  # checkpoint written; a requeued job resumes with --resume auto
    if comm.allreduce_obj(preemption.raised is not None, op="lor"):
        # Signalled after the last step: training is complete and its final checkpoint (epoch
        # end) is written; skip the final evaluation and exit cleanly.
        if rank == 0:
            print("[mpinet] signal received after training finished; exiting", flush=True)
        return 0
    if cfg["save_weights"]:
        model.save_weights(cfg["save_weights"])
    final = model.evaluate(test)
    if hasattr(test, "vocab_size"):  # a language model: the loss in bits per character too
        from mpinet.sample import report_language_model

        final = report_language_model(model, final, cfg, rank)
    if rank == 0:
        print("final test: " + ", ".join(f"{k} {v:.4f}" for k, v in final.items()), flush=True)
    if train.is_segmentation:
        from mpinet.training.segmentation_metrics import format_report, segmentation_report

        report = segmentation_report(model, test)
        if rank == 0:
            print("final test " + format_report(report, test.class_names), flush=True)
    return save_model_file(cfg, model, final, rank)


def save_model_file(cfg: dict, model, final: dict, rank: int) -> int:
    """Write the model file (--save-model, or CHECKPOINT_DIR/model.mpinet) with the final test
    figures recorded; 2 if it cannot be written (the same one-line error on every rank)."""
    path = cfg["save_model"] or (os.path.join(cfg["checkpoint_dir"], "model.mpinet")
                                 if cfg["checkpoint_dir"] else None)
    if not path:
        return 0
    try:
        from mpinet.data.registry import dataset_options

        # How setup() read the test split: get_dataset(dataset, split, data_dir, **options).
        options = {"raw": True} if "raw" in dataset_options(cfg["dataset"]) else {}
        if "stream" in dataset_options(cfg["dataset"]):
            options["stream"] = True
        if cfg["mask_values"] is not None:
            options["mask_values"] = [int(v) for v in str(cfg["mask_values"]).split(",")]
        model.save(path, evaluation={"dataset": cfg["dataset"], "split": "test",
                                     "data_dir": cfg["data_dir"], "options": options,
                                     "figures": final})
    except ValueError as e:
        if rank == 0:
            print(f"mpinet.train: error: {e}", file=sys.stderr, flush=True)
        return 2
    if rank == 0 and not cfg["quiet"]:
        print(f"model file: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
