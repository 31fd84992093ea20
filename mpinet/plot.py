"""``python -m mpinet.plot``: PNG curves from a metrics file, or a scaling plot.

    python -m mpinet.plot runs/metrics.jsonl -o curves.png        # loss/accuracy per step and epoch
    python -m mpinet.plot --scaling runs/scaling.jsonl -o scaling.png

The metrics file is what ``python -m mpinet.train --metrics FILE`` writes (JSON lines with
"kind": "step" or "epoch"). The scaling file is what ``benchmarks/scaling.py --out FILE`` writes:
one JSON line per run with "gpus" and "img_per_s" (and optionally "model").
"""
from __future__ import annotations

import argparse
import json
import sys


def read_jsonl(path: str) -> list[dict]:
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not a JSON line ({e}); "
                                 "is this a metrics file?") from e
    if not records:
        raise SystemExit(f"{path}: no records")
    return records


def plot_metrics(records: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    keys = [k for k in ("loss", "accuracy", "iou") if any(k in r for r in steps + epochs)]
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(5 * max(1, len(keys)), 4),
                             squeeze=False)
    # strict=False: with no keys there is still one (empty) axis
    for ax, key in zip(axes[0], keys, strict=False):
        xs = [r["step"] for r in steps if key in r]
        ax.plot(xs, [r[key] for r in steps if key in r], label=f"train {key} (per window)",
                alpha=0.6)
        ep = [r for r in epochs if f"val_{key}" in r]
        if ep and steps:
            # place each epoch's validation point at the last logged step of that epoch
            last_step = {r["epoch"]: r["step"] for r in steps}
            ax.plot([last_step.get(r["epoch"], r["epoch"]) for r in ep],
                    [r[f"val_{key}"] for r in ep],
                    "o-", label=f"validation {key}")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def plot_scaling(records: list[dict], out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(r):  # one line per model and step mode
        return r.get("model", "") + (" (CUDA graph)" if r.get("cuda_graph") else "")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name in sorted({series(r) for r in records}):
        rs = sorted((r for r in records if series(r) == name), key=lambda r: r["gpus"])
        base = next((r["img_per_s"] for r in rs if r["gpus"] == 1), None)
        gpus = [r["gpus"] for r in rs]
        ax1.plot(gpus, [r["img_per_s"] for r in rs], "o-", label=name or "run")
        if base:
            ax2.plot(gpus,
                     [r["img_per_s"] / (g * base) for r, g in zip(rs, gpus, strict=True)],
                     "o-",
                     label=name or "run")
    ax1.set(xlabel="GPUs", ylabel="img/s", title="throughput")
    ax2.set(xlabel="GPUs", ylabel="efficiency", title="scaling efficiency", ylim=(0, 1.1))
    for ax in (ax1, ax2):
        ax.set_xticks(sorted({r["gpus"] for r in records}))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpinet.plot", description=__doc__.split("\n\n")[0])
    p.add_argument("file", help="metrics JSON-lines file (or scaling results with --scaling)")
    p.add_argument("-o", "--out", default=None, help="output PNG (default: FILE with .png)")
    p.add_argument("--scaling", action="store_true", help="FILE holds scaling benchmark results")
    a = p.parse_args(argv)
    out = a.out or a.file.rsplit(".", 1)[0] + ".png"
    records = read_jsonl(a.file)
    (plot_scaling if a.scaling else plot_metrics)(records, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
