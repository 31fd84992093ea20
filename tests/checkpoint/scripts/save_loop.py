"""Save checkpoints in a loop until killed (for the SIGKILL-during-save test).

    python save_loop.py DIR MEGABYTES

Step 1 is small; from step 2 on each state holds about MEGABYTES of float32 whose values are a
function of the step (``expected_array``), so the test can check what a surviving checkpoint
holds. Prints "pid <its pid>" first, then "saved <step>" after each save returns.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from ckpt_helpers import LocalComm, sample_state
from mpinet import checkpoint


def expected_array(step: int, megabytes: int) -> np.ndarray:
    n = 1 if step == 1 else megabytes * (1 << 20) // 4
    return np.arange(n, dtype=np.float32) + np.float32(step)  # (n,)


def main() -> int:
    directory, megabytes = sys.argv[1], int(sys.argv[2])
    print(f"pid {os.getpid()}", flush=True)
    step = 1
    while True:
        state = sample_state(step)
        state["model"]["big"] = expected_array(step, megabytes)
        checkpoint.save(directory, state, step, LocalComm(), keep=2)
        print(f"saved {step}", flush=True)
        step += 1


if __name__ == "__main__":
    sys.exit(main())
