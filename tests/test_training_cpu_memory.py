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
