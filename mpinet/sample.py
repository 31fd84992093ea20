"""Sample text from a trained character-level language model (the zoo's "char-lstm" or
"char-transformer", chosen with --model).

    python -m mpinet.train --model char-lstm --dataset python-source --epochs 1 \\
        --save-weights /tmp/char.safetensors
    python -m mpinet.sample --weights /tmp/char.safetensors --length 300 --prompt "def "

``--model-opt`` must repeat the options the model was trained with (e.g. hidden_size=128).
The vocabulary is mpinet.data.text's fixed one; sampling is seeded (--seed) and runs on one
process. ``python -m mpinet.train ... --sample 300`` prints a sample after training instead.
"""
from __future__ import annotations

import argparse
import json
import math
import sys


def sample_text(net, prompt: str, length: int, temperature: float = 0.8, seed: int = 0) -> str:
    """``prompt`` followed by ``length`` sampled characters."""
    from mpinet.data import text

    ids = net.generate(text.encode(prompt), length, temperature=temperature, seed=seed)
    return prompt + text.decode(ids)


def report_language_model(model, final: dict, cfg: dict, rank: int) -> dict:
    """The CLI's end of a language-model run: val bits per character, and a sample if asked."""
    final = dict(final, bpc=final["loss"] / math.log(2))
    if cfg["sample"] and rank == 0:
        print("sample:\n" + sample_text(model.network, cfg["sample_prompt"], int(cfg["sample"]),
                                        float(cfg["temperature"]), int(cfg["seed"])), flush=True)
    return final


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mpinet.sample", description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True, help="safetensors file from --save-weights")
    p.add_argument("--model", default="char-lstm")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE", default=[])
    p.add_argument("--prompt", default="def ")
    p.add_argument("--length", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    from mpinet import checkpoint
    from mpinet.data import text
    from mpinet.models import build_model

    opts = {"num_classes": text.VOCAB_SIZE}
    for item in args.model_opt:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"mpinet.sample: --model-opt {item!r} must look like KEY=VALUE", file=sys.stderr)
            return 2
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    try:
        net = build_model(args.model, **opts)
        net.load_state_dict(checkpoint.load_weights(args.weights))
    except (OSError, ValueError, KeyError) as e:
        print(f"mpinet.sample: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(sample_text(net, args.prompt, args.length, args.temperature, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
