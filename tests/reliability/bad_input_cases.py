"""The bad inputs of issue #20: each must end ``python -m mpinet.train`` with exit code 2 and
exactly one line, from rank 0 only, naming the value, before any training.

``make_cases(tmp)`` builds the files each case needs under ``tmp`` and returns
``{name: (argv, expected substring of the one line)}``. Shared by the in-process (1 rank) test
and the 2-rank job (bad_input_job.py).
"""
import json
import os

BASE = ["--quiet", "--epochs", "1", "--train-samples", "64"]


def make_cases(tmp: str) -> dict:
    regular = os.path.join(tmp, "regular-file.txt")
    with open(regular, "w") as f:
        f.write("not a checkpoint\n")
    empty = os.path.join(tmp, "empty-dir")
    os.makedirs(empty, exist_ok=True)
    # A damaged checkpoint: the folder name and meta.json are there, its JSON is cut short.
    broken_root = os.path.join(tmp, "ckpts")
    broken = os.path.join(broken_root, "ckpt-00000005")
    os.makedirs(broken, exist_ok=True)
    with open(os.path.join(broken, "meta.json"), "w") as f:
        f.write('{"format": "mpinet-checkpoint", "step": 5, "trunc')
    a_list = os.path.join(tmp, "list.json")
    with open(a_list, "w") as f:
        json.dump([1, 2], f)
    abc = os.path.join(tmp, "abc.json")
    with open(abc, "w") as f:
        json.dump({"epochs": "abc"}, f)
    typo = os.path.join(tmp, "typo.json")
    with open(typo, "w") as f:
        json.dump({"learning_rate": 0.1}, f)
    # Unwritable for anyone, root included: a path below a regular file.
    below_file = os.path.join(regular, "sub")
    return {
        "lr-nan": (["--lr", "nan"], "--lr must be a finite number, got nan"),
        "lr-inf": (["--lr", "inf"], "--lr must be a finite number, got inf"),
        "train-samples-negative": (["--train-samples", "-5"],
                                   "--train-samples must be > 0, got -5"),
        "train-samples-zero": (["--train-samples", "0"], "--train-samples must be > 0, got 0"),
        "resume-regular-file": (["--resume", regular], f"--resume {regular!r}"),
        "resume-empty-dir": (["--resume", empty], f"--resume {empty!r}"),
        "resume-corrupt": (["--resume", broken], "meta.json: not valid JSON"),
        "config-list": (["--config", a_list], "holds a list; it must be a JSON object"),
        "config-epochs-abc": (["--config", abc],
                              "key 'epochs' (--epochs): 'abc' is not an integer"),
        "config-unknown-key": (["--config", typo], "unknown key 'learning_rate'"),
        "checkpoint-dir-unwritable": (["--checkpoint-dir", below_file],
                                      f"--checkpoint-dir {below_file!r} cannot be created"),
        "metrics-unwritable": (["--metrics", os.path.join(below_file, "m.jsonl")],
                               f"--metrics {os.path.join(below_file, 'm.jsonl')!r}"),
        "save-weights-unwritable": (["--save-weights", os.path.join(below_file, "w.st")],
                                    f"--save-weights {os.path.join(below_file, 'w.st')!r}"),
        "nccl-on-cpu": (["--comm", "nccl", "--device", "cpu"], "--comm nccl needs GPUs"),
        "gpu-without-gpu": (["--device", "gpu"], "--device gpu, but no usable CUDA GPU"),
        "label-smoothing-5": (["--label-smoothing", "5"],
                              "--label-smoothing must be >= 0 and < 1, got 5"),
        "resume-auto-all-corrupt": (["--resume", "auto", "--checkpoint-dir", broken_root],
                                    "--resume auto: all 1 checkpoint(s)"),
        "argparse-error": (["--epochs", "three"], "argument --epochs: invalid int value: 'three'"),
        "comm-timeout-negative": (["--comm-timeout", "-1"], "--comm-timeout must be > 0, got -1"),
    }
