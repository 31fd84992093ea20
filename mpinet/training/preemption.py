"""Pre-emption: SIGTERM / SIGUSR1 (Slurm's warning) become a flag the training loop checks.

The loop reduces the flag over ranks every step, so all ranks stop at the same step, write one
checkpoint and exit 0; a requeued job resumes exactly with ``--resume auto``.
"""
from __future__ import annotations

import signal


class PreemptionFlag:
    """SIGTERM / SIGUSR1 set a flag; the training loop reduces it over ranks every step, so all
    ranks stop at the same step, write one checkpoint and exit cleanly (a Slurm requeue resumes)."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.raised = None
        self._previous = {}

    @property
    def installed(self) -> bool:
        return bool(self._previous)

    def install(self) -> None:
        for name in self.SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.raised = signal.Signals(signum).name

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
