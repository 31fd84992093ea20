"""Tests on emulated hosts (network + UTS namespaces, tests/multihost/hosts.sh). Every test here
launches its own jobs across the hosts, so they run in the single-process pytest session; they
skip, with the reason, when the hosts are not up (tests/run.sh starts them as root)."""
import pytest

from bed import bed_problem, slurm_problem


@pytest.fixture(scope="session")
def bed():
    problem = bed_problem()
    if problem:
        pytest.skip(problem)


@pytest.fixture(scope="session")
def bed_slurm(bed):
    problem = slurm_problem()
    if problem:
        pytest.skip(problem)
