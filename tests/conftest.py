import os

import pytest
import torch

# Two cores on CI: keep intra-op threads bounded so parallel work (servers, browsers) is not starved.
torch.set_num_threads(int(os.environ.get("DDPM_TEST_THREADS", "2")))


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)
