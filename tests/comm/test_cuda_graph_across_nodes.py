"""--cuda-graph with the nccl communicator across nodes is accepted; hierarchical (host-staged)
is still refused with the reason. The GPU is faked: only the up-front check is under test."""
from types import SimpleNamespace

import pytest

from mpinet import backend
from mpinet.nn import Linear, Sequential
from mpinet.training import cuda_graph


def fake_step(comm_name, num_nodes):
    return SimpleNamespace(
        precision=SimpleNamespace(loss_scaling=False),
        dp=SimpleNamespace(grad_dtype=None, mode="backward"),
        comm=SimpleNamespace(name=comm_name, size=8, num_nodes=num_nodes),
        network=Sequential(Linear(2, 2)))


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(backend, "current", lambda: SimpleNamespace(is_gpu=True))


@pytest.mark.parametrize("num_nodes", [1, 2, 4])
def test_nccl_is_capturable_on_any_number_of_nodes(fake_gpu, num_nodes):
    cuda_graph.check_capturable(fake_step("nccl", num_nodes))  # no error


def test_hierarchical_is_refused_with_the_reason(fake_gpu):
    with pytest.raises(ValueError, match="the 'hierarchical' communicator .*host-staged.*"
                                         "use comm 'nccl'"):
        cuda_graph.check_capturable(fake_step("hierarchical", 2))
