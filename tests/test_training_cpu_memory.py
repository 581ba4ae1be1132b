"""CPU training keeps freed memory in the process (glibc's mmap and trim thresholds), unless the user set their own."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO_ROOT

PROBE = "from training.cpu_memory import keep_freed_memory; print(keep_freed_memory())"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_thresholds_are_raised_on_glibc_unless_the_user_chose_their_own():
    env = {"PATH": "/usr/bin:/bin"}  # a fresh process: mallopt changes the allocator of the one that calls it
    fresh = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert fresh.stdout.strip() == "True", fresh.stderr
    chosen = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO_ROOT, env={**env, "MALLOC_ARENA_MAX": "2"},
                            capture_output=True, text=True)
    assert chosen.stdout.strip() == "False", chosen.stderr


# Allocate, touch and free a 256 MB block twice; print the page faults of the second time. glibc serves such a block
# by mmap and unmaps it on free, so each time faults all its pages in again; kept in the heap, the second time reuses
# pages already mapped.
CHURN = """
import resource
from training.cpu_memory import keep_freed_memory
print(keep_freed_memory())
def churn():
    block = bytearray(256 * 1024 * 1024)  # zero-filled: every page touched
    del block
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_a_freed_large_block_is_reused_without_faulting_its_pages_in_again():
    env = {"PATH": "/usr/bin:/bin"}
    pages = 256 * 1024 * 1024 // 4096
    kept = subprocess.run([sys.executable, "-c", CHURN], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert kept.stdout.split()[0] == "True", kept.stderr
    assert int(kept.stdout.split()[1]) < pages // 10
    default = subprocess.run([sys.executable, "-c", CHURN], cwd=REPO_ROOT, env={**env, "MALLOC_ARENA_MAX": "8"},
                             capture_output=True, text=True)
    assert default.stdout.split()[0] == "False", default.stderr
    assert int(default.stdout.split()[1]) > pages // 2  # glibc's own behaviour: the check above can fail
