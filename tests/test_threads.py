"""The thread budget's decision (mpinet.threads.choose_threads) with fake cores and environments,
and the CLI's override flag. The MPI side (threadpoolctl's real settings): test_threads_mpi.py."""

import pytest

from mpinet import threads

NODE_16 = set(range(16))


def shared(ranks: int, cpus=NODE_16):
    """Every local rank sees the whole node (no binding)."""
    return [set(cpus) for _ in range(ranks)]


@pytest.mark.parametrize("ranks, expected", [(1, 16), (2, 8), (4, 4), (3, 5), (32, 1)])
def test_ranks_sharing_a_node_split_its_cores(ranks, expected):
    for index in range(ranks):
        budget = threads.choose_threads(shared(ranks), index, env={})
        assert (budget.threads, budget.cores, budget.local_ranks, budget.source) == (
            expected,
            expected,
            ranks,
            "auto",
        )


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_two_core_machine(ranks):
    budget = threads.choose_threads(shared(ranks, {0, 1}), 0, env={})
    assert budget.threads == max(1, 2 // ranks)


def test_ranks_bound_to_their_own_cores_keep_them():
    masks = [{0, 1, 2, 3}, {4, 5, 6, 7}, {8, 9, 10, 11}, {12, 13, 14, 15}]  # --bind-to core x4
    assert [threads.choose_threads(masks, i, env={}).threads for i in range(4)] == [4, 4, 4, 4]
    overlap = [{0, 1, 2, 3}, {2, 3, 4, 5}]  # two CPUs shared by both: 2 + 2 * 1/2 = 3 each
    assert [threads.choose_threads(overlap, i, env={}).threads for i in range(2)] == [3, 3]


def test_slurm_cpus_per_task_caps_the_share():
    assert threads.choose_threads(shared(2), 0, env={"SLURM_CPUS_PER_TASK": "3"}).threads == 3
    assert threads.choose_threads(shared(2), 0, env={"SLURM_CPUS_PER_TASK": "12"}).threads == 8


@pytest.mark.parametrize("ranks", [1, 2, 4])
def test_user_value_wins(ranks):
    env = {"OMP_NUM_THREADS": "7"}
    budget = threads.choose_threads(shared(ranks), 0, env=env)
    assert (budget.threads, budget.source) == (7, "OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS" in budget.describe()
    flagged = threads.choose_threads(shared(ranks), 0, env=env, flag=2)  # the flag beats the env
    assert (flagged.threads, flagged.source) == (2, "--threads")


def test_bad_user_values_are_named():
    with pytest.raises(ValueError, match="OMP_NUM_THREADS='many'"):
        threads.choose_threads(shared(2), 0, env={"OMP_NUM_THREADS": "many"})
    with pytest.raises(ValueError, match="--threads must be >= 1"):
        threads.choose_threads(shared(2), 0, env={}, flag=0)
    assert threads.choose_threads(shared(2), 0, env={"OMP_NUM_THREADS": "4,2"}).threads == 4


def test_auto_message_says_how_to_override():
    text = threads.choose_threads(shared(2, {0, 1}), 1, env={}).describe()
    assert text.startswith("threads: 1 per rank") and "set OMP_NUM_THREADS or --threads" in text


@pytest.mark.parametrize("cores, workers, expected", [(8, 0, 0), (8, 7, 1), (16, 3, 5), (2, 4, 1)])
def test_worker_threads_fit_in_the_rank_share(cores, workers, expected):
    assert threads.worker_budget(cores, workers) == expected
    assert threads.default_workers(cores) == cores - 1


def test_cli_rejects_zero_threads():
    from mpinet.train import ConfigError, load_config, validate

    with pytest.raises(ConfigError, match="--threads must be > 0, got 0"):
        validate(load_config(["--threads", "0"]))
    with pytest.raises(ConfigError, match="--workers must be >= 0, got -1"):
        validate(load_config(["--workers", "-1"]))


def test_rank_gives_its_workers_room(monkeypatch):
    from threadpoolctl import threadpool_info, threadpool_limits

    before = max(i["num_threads"] for i in threadpool_info())
    monkeypatch.setattr(threads, "_applied", threads.ThreadBudget(8, 8, 1, "auto"))
    try:
        assert threads.make_room_for_workers(3, 2) == 2  # 8 cores - 3 workers x 2 threads
        assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == {2}
        assert threads.make_room_for_workers(7, 1) == 1
        monkeypatch.setattr(threads, "_applied", threads.ThreadBudget(5, 8, 1, "--threads"))
        assert threads.make_room_for_workers(7, 1) == 5  # the user's count is kept
    finally:
        threadpool_limits(limits=before)


@pytest.mark.parametrize("env, want", [({}, "auto"), ({"OMP_NUM_THREADS": "3"}, "user")])
def test_cli_prints_its_choice_once(env, want):
    """python -m mpinet.train under mpiexec -n 2 in a user's environment: rank 0 says once how
    many threads each rank uses; OMP_NUM_THREADS wins when set."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clean = {k: v for k, v in os.environ.items() if k not in threads.THREAD_ENV_VARS}
    full = dict(clean, MPIR_CVAR_ENABLE_HEAVY_YIELD="1", PYTHONPATH=root, **env)
    proc = subprocess.run(["mpiexec", "-n", "2", sys.executable, "-m", "mpinet.train",
                           "--epochs", "1"], cwd=root, env=full, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("[mpinet] threads:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    if want == "user":
        assert lines[0] == "[mpinet] threads: 3 per rank (from OMP_NUM_THREADS)"
    else:
        assert "rank(s) on this node; set OMP_NUM_THREADS or --threads to override" in lines[0]


def test_launcher_local_size_for_a_communicator_of_one():
    assert threads.launcher_local_size({"MPI_LOCALNRANKS": "4"}) == 4
    assert threads.launcher_local_size({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}) == 2
    assert threads.launcher_local_size({}) == 1
