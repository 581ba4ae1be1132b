"""`processing.files`: every writer's target is complete under its final name or absent."""

from __future__ import annotations

import json
import os
import stat

import pytest

from processing.files import atomic_output_file, write_json, write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"accuracy": 0.5})
    with pytest.raises(RuntimeError), atomic_output_file(target) as temporary:
        temporary.write_text("{half", encoding="utf-8")
        raise RuntimeError("killed half way")
    assert json.loads(target.read_text(encoding="utf-8")) == {"accuracy": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_written_files_get_the_usual_permissions_not_mkstemps_0600(tmp_path):
    target = tmp_path / "deep" / "report.md"
    write_text(target, "# Report\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert target.read_text(encoding="utf-8") == "# Report\n"
