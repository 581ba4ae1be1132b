"""Locating and importing transformers' common test suite (`../shared/transformers-tests/`, or `$TF_TESTS_DIR`).

Shared by the adapters `test_transformers_common.py` (model, generation, config) and
`test_transformers_common_processor.py`. `LLAVA_COMMON_TESTS_TARGET=builtin` points both at transformers' built-in
LLaVA classes instead of ours (calibration).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

TARGET = os.environ.get("LLAVA_COMMON_TESTS_TARGET", "ours")
if TARGET not in ("ours", "builtin"):
    raise ValueError(f"LLAVA_COMMON_TESTS_TARGET must be 'ours' or 'builtin', got {TARGET!r}.")


def _find_common_suite() -> Path | None:
    candidates = [os.environ.get("TF_TESTS_DIR"), REPO_ROOT / "shared" / "transformers-tests",
                  REPO_ROOT.parent / "shared" / "transformers-tests"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "tests" / "test_modeling_common.py").is_file():
            return Path(candidate)
    return None


SUITE_ROOT = _find_common_suite()

#: The suite's `tests` package would clash with ours: load it under its own name.
SUITE_PACKAGE = "transformers_common_tests"


def import_suite(module: str):
    """`module` of the suite (e.g. "test_modeling_common"); skips the calling test module where it is missing."""
    if SUITE_ROOT is None:
        # CI always has `../shared/` beside the clone: there a missing suite is a broken set-up, not a skip.
        if os.environ.get("CI"):
            raise RuntimeError("transformers' common test suite not found in ../shared/ or $TF_TESTS_DIR (CI)")
        pytest.skip("transformers' common test suite not found (set TF_TESTS_DIR)", allow_module_level=True)
    if os.environ.get("CI"):
        import parameterized  # noqa: F401  (the `dev` extra installs it; CI must run these tests, not skip them)
    pytest.importorskip("parameterized", reason="transformers' common tests need the `dev` extra (parameterized)")
    if SUITE_PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            SUITE_PACKAGE, SUITE_ROOT / "tests" / "__init__.py", submodule_search_locations=[str(SUITE_ROOT / "tests")]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[SUITE_PACKAGE] = package
        spec.loader.exec_module(package)
        # `generation/test_utils.py` imports `tests.exporters.test_export` absolutely; our `tests/` has no
        # `exporters`, so alias just that module (the parent `tests` package is never looked up).
        sys.modules["tests.exporters.test_export"] = importlib.import_module(f"{SUITE_PACKAGE}.exporters.test_export")
    return importlib.import_module(f"{SUITE_PACKAGE}.{module}")
