"""Every trainer command in the docs parses: README.md, launch/README.md, slurm/README.md and the
usage lines of the slurm/ scripts. Commands come from fenced code blocks (and `#   ` usage lines
of the scripts); trainer arguments are found after `python -m mpinet.train`, after `--` of
launch/local.sh and launch/hosts.sh, and after the batch script of slurm/submit.sh. Each set is
parsed by the trainer's own argparse parser and checked like the trainer does before training
(known model and data set, consistent flags); only paths are not checked (they are the reader's).
"""
import re
import shlex
from pathlib import Path

import pytest

from mpinet import train

REPO = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "launch/README.md", "slurm/README.md"]
SCRIPT_GLOBS = ["slurm/*.sbatch", "slurm/submit.sh", "launch/*.sh"]


def code_lines(path: Path):
    """(first line number, shell line) of the fenced code blocks of a Markdown file, or of a
    script's usage comments (`#   command ...`); backslash continuations are joined."""
    text = path.read_text().splitlines()
    if path.suffix == ".md":
        picked, inside = [], False
        for i, line in enumerate(text, 1):
            if line.lstrip().startswith("```"):
                inside = not inside
            elif inside:
                picked.append((i, line))
    else:
        picked = [(i, m.group(1)) for i, line in enumerate(text, 1)
                  if (m := re.match(r"#\s{2,}(\S.*)$", line))]
    out, first, cur = [], None, ""
    for i, line in picked:
        first = first or i
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append((first, cur + line))
        first, cur = None, ""
    if cur:
        out.append((first, cur))
    return out


def trainer_args(words):
    """The trainer's arguments in one shell command (a list of words), or None if it does not
    run the trainer."""
    for i, w in enumerate(words):
        if w == "mpinet.train" and i > 0 and words[i - 1] == "-m":
            return words[i + 1:]
        if w.endswith(("launch/local.sh", "launch/hosts.sh")):
            rest = words[i + 1:]
            if "-p" in rest[: rest.index("--") if "--" in rest else len(rest)]:
                return None  # another program: its arguments are not the trainer's
            return rest[rest.index("--") + 1:] if "--" in rest else []
        if w.endswith("slurm/submit.sh"):
            for j in range(i + 1, len(words)):
                if words[j].endswith(".sbatch"):
                    return words[j + 1:]
            return None
    return None


def split_commands(line):
    """Shell words of each command on a line (split at &&, ||, ;, |; comments dropped)."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    cmds, cur = [], []
    for w in words:
        if w in ("&&", "||", ";", "|"):
            cmds.append(cur)
            cur = []
        else:
            cur.append(w)
    cmds.append(cur)
    return [c for c in cmds if c]


def documented_commands():
    found = []
    paths = [REPO / d for d in DOCS]
    for pattern in SCRIPT_GLOBS:
        paths += sorted(REPO.glob(pattern))
    for path in paths:
        for number, line in code_lines(path):
            for words in split_commands(line):
                args = trainer_args(words)
                if args is not None:
                    found.append((f"{path.relative_to(REPO)}:{number}", line.strip(), args))
    return found


def check_trainer_args(args):
    """Parse and validate like the trainer; raises (SystemExit from argparse, or ConfigError)."""
    if "--help" in args or "-h" in args:
        return
    cfg = train.load_config(args).as_dict()
    # Paths are the reader's business (the docs use placeholders like /data/cifar10).
    cfg["data_dir"] = None
    if cfg["resume"] not in (None, "auto"):
        cfg["resume"] = None
    train.validate(cfg)


COMMANDS = documented_commands()


def test_the_docs_hold_trainer_commands():
    where = {w.split(":")[0] for w, _, _ in COMMANDS}
    assert len(COMMANDS) >= 15, COMMANDS
    assert {"README.md", "launch/README.md", "slurm/README.md",
            "slurm/train_multinode.sbatch"} <= where, where


@pytest.mark.parametrize("where, line, args", COMMANDS, ids=[w for w, _, _ in COMMANDS])
def test_documented_command_parses(where, line, args, capsys):
    try:
        check_trainer_args(args)
    except SystemExit as e:
        err = capsys.readouterr().err.strip().splitlines()
        pytest.fail(f"{where}: `{line}` does not parse ({err[-1] if err else e})")
    except train.ConfigError as e:
        pytest.fail(f"{where}: `{line}`: {e}")


@pytest.mark.parametrize("line, message", [
    ("python -m mpinet.train --model resnet50 --dataset imagenet",
     "--dataset 'imagenet' is unknown"),
    ("launch/hosts.sh -f h -N 8 -- --model nosuchnet", "--model 'nosuchnet' is unknown"),
    ("slurm/submit.sh --nodes=2 slurm/train_multinode.sbatch --epochz 3",
     "unrecognized arguments: --epochz"),
    ("mpirun -n 2 python -m mpinet.train --resume auto", "--resume auto needs --checkpoint-dir"),
])
def test_a_bad_documented_command_fails(line, message, capsys):
    (words,) = split_commands(line)
    with pytest.raises((SystemExit, train.ConfigError)) as info:
        check_trainer_args(trainer_args(words))
    text = str(info.value) + capsys.readouterr().err
    assert message in text, text


def test_commands_are_found_in_code_blocks_and_usage_lines_only(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Prose `python -m mpinet.train --bogus` is not a command.\n\n```bash\n"
                   "mpiexec -n 2 python -m mpinet.train --epochs 2 \\\n    --quiet  # note\n"
                   "launch/local.sh -n 4 -p \"python my.py\" -- --x 1\n```\n")
    lines = code_lines(doc)
    assert [ln for _, ln in lines][0].split() == ["mpiexec", "-n", "2", "python", "-m",
                                                  "mpinet.train", "--epochs", "2", "--quiet",
                                                  "#", "note"]
    args = [trainer_args(w) for _, ln in lines for w in split_commands(ln)]
    assert args == [["--epochs", "2", "--quiet"], None]
