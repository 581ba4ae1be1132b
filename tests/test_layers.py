"""The layer contracts of docs/architecture.md ("Layout: packages as layers"), checked by import-linter.

`.importlinter` declares them: packages as layers (no import runs upward, siblings stay apart), no library module
imports the tests or the benchmarks, the remote-code files import nothing else of the project.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from conftest import REPO_ROOT


def test_lint_imports_keeps_every_contract():
    lint_imports = shutil.which("lint-imports") or os.path.join(os.path.dirname(sys.executable), "lint-imports")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([lint_imports, "--no-cache"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout
