"""Fixtures for the slurm/ tests.

CI starts a single-node Slurm with tests/slurm/start_slurm.sh; where `sinfo` is missing or does
not answer, every test that uses the ``slurm`` fixture is skipped with the reason.
"""
import pytest

from slurm_harness import Slurm, slurm_problem


@pytest.fixture(scope="session")
def _slurm_up():
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture
def slurm(_slurm_up):
    cluster = Slurm()
    yield cluster
    cluster.cancel_all()  # a failed test leaves no job behind (no-op for finished jobs)
