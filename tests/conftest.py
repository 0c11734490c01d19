import os

import pytest
import torch

# keep test runs quiet and deterministic on 2-core CI machines
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
