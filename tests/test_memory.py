"""`sparsify._memory`: freed large tensors leave the resident set inside `large_allocations_unmapped`."""

from __future__ import annotations

import ctypes.util
import json
import os
import platform
import subprocess
import sys

import pytest

from sparsify._memory import large_allocations_unmapped

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc" or ctypes.util.find_library("c") is None,
                           reason="glibc's mallopt / malloc_trim")

# run in a fresh process: a long-lived one (a test worker) may hold a free heap chunk large enough to serve the
# allocation, which glibc reuses whatever the mmap threshold
_PROBE = """
import json, re, torch
from sparsify._memory import large_allocations_unmapped, release_freed_memory

def rss():
    return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1))

def held_after_free(mib):
    before = rss()
    tensor = torch.ones(mib * 2**20 // 4)  # touched: resident
    touched = rss() - before
    del tensor
    return touched, rss() - before

primer = torch.ones(30 * 2**20 // 4)
del primer  # glibc's adaptive threshold now keeps freed chunks up to 30 MiB in its heap (resident)
release_freed_memory()
outside = held_after_free(6)
with large_allocations_unmapped():
    inside = [held_after_free(16) for _ in range(3)]  # more than the heap holds free: a new mapping
print(json.dumps([outside, inside]))
"""


@glibc
def test_a_freed_large_tensor_leaves_the_resident_set_inside_the_block():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    done = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True)
    outside, inside = json.loads(done.stdout.strip().splitlines()[-1])
    assert outside[0] > 5 * 1024 and outside[1] > 5 * 1024  # the control: kept in the heap, resident
    for touched, held in inside:
        assert touched > 15 * 1024 and held < 1024  # its own mapping, unmapped on free


def test_the_block_gives_exceptions_back_and_leaves_a_users_setting_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    with pytest.raises(KeyError, match="inside"), large_allocations_unmapped():
        raise KeyError("inside")
