"""Start a job's ``rank_main(rank, port, out_dir)`` in two processes on a free local port (gloo, CPU) — what the
DDP, layer-wise DDP and FSDP2 jobs share."""

from __future__ import annotations

import socket
from collections.abc import Callable

import torch.multiprocessing as mp


def spawn_two_ranks(rank_main: Callable[[int, int, str], None], out_dir: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(rank_main, args=(port, out_dir), nprocs=2, join=True)
