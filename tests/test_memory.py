"""`sparsify._memory`: freed large tensors leave the resident set inside `large_allocations_unmapped`."""

from __future__ import annotations

import ctypes.util
import platform
import re

import pytest
import torch

from sparsify._memory import large_allocations_unmapped, release_freed_memory

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
                           reason="glibc's mallopt / malloc_trim")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        match = re.search(r"VmRSS:\s+(\d+)", status.read())
    assert match is not None
    return int(match.group(1))


@glibc
def test_a_freed_large_tensor_leaves_the_resident_set_inside_the_block(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    primer = torch.ones(30 * 2**20 // 4)
    del primer  # glibc's adaptive threshold now keeps freed chunks up to 30 MiB in its heap (resident)
    release_freed_memory()
    with large_allocations_unmapped():
        for _ in range(3):
            before = _rss_kib()
            tensor = torch.ones(6 * 2**20 // 4)  # touched: 6 MiB resident
            assert _rss_kib() - before > 5 * 1024
            del tensor
            assert _rss_kib() - before < 1024  # unmapped on free


def test_the_block_runs_and_gives_exceptions_back_whatever_the_environment(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # the user's own setting is left alone
    with pytest.raises(KeyError, match="inside"), large_allocations_unmapped():
        raise KeyError("inside")
