"""`llava demo` resumes a run only when the settings that made its cached steps are unchanged."""

from __future__ import annotations

import json

import pytest

from demo.settings import PRESETS, check_run_settings, run_settings


def test_run_settings_cover_what_the_cached_steps_depend_on():
    settings = run_settings("default", PRESETS["default"], seed=0)
    assert settings["train_scenes"] == PRESETS["default"]["train_scenes"] and settings["seed"] == 0
    assert {"demo_stage1.yaml", "demo_stage2.yaml", "data_generator", "tower", "scene_rows"} <= set(settings)
    assert settings["tower"]["image_size"] == 48 and settings["tower"]["patch_size"] == 16
    assert run_settings("default", PRESETS["default"], seed=1) != settings
    json.dumps(settings)  # written as run_settings.json


def test_a_run_directory_is_resumed_only_with_the_same_settings(tmp_path):
    settings = run_settings("quick", PRESETS["quick"], seed=0)
    check_run_settings(tmp_path, settings)
    assert json.loads((tmp_path / "run_settings.json").read_text()) == settings
    (tmp_path / "stage1").mkdir()  # a cached step
    check_run_settings(tmp_path, settings)  # same settings: resumes

    with pytest.raises(SystemExit, match=r"other settings \(.*train_scenes: 96 there, 4800 now"):
        check_run_settings(tmp_path, run_settings("quick", {**PRESETS["quick"], "train_scenes": 4800}, seed=0))
    assert (tmp_path / "stage1").is_dir()  # nothing deleted


def test_a_non_empty_directory_without_settings_is_not_taken_over(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit, match="not empty and has no run_settings.json"):
        check_run_settings(tmp_path, run_settings("quick", PRESETS["quick"], seed=0))
    assert (tmp_path / "notes.txt").read_text() == "mine" and not (tmp_path / "run_settings.json").exists()
