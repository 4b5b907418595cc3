import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models here are tiny: one intra-op thread is as fast, and it does not collapse the way two
    OpenMP threads do when the 2-core machine is busy with other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
