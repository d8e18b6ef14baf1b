"""One torch thread for the tests of tiny models (no tests here)."""

from __future__ import annotations

from collections.abc import Iterator


def one_thread() -> Iterator[None]:
    """Body of a module's autouse fixture (``yield from one_thread()``): tiny models run about
    10x faster single-threaded on a busy machine (their ops are too small to split)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
