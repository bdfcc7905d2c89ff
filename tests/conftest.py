"""Fixtures shared by the test modules.

``one_thread``: modules of tiny models opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run far faster so (more threads only
    contend at their barriers, 10x slower under load); the previous count is restored."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
