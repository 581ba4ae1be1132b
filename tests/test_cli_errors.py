"""The console script on bad input and bad configs: one clear line and a non-zero exit, no traceback (the debug
switch aside)."""

from __future__ import annotations

import sys
import types

import pytest

from llava_cli import main as cli


def _run(capsys, argv):
    status = cli.main(argv)
    captured = capsys.readouterr()
    return status, captured.err.strip()


def test_yaml_unknown_key_names_it_and_the_nearest_valid_name(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("stage: 2\nlearning_rat: 0.1\n")
    status, err = _run(capsys, ["train", "--config", str(config)])
    assert status == 1
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "'learning_rat'" in err and "'learning_rate'" in err and str(config) in err


def test_yaml_stage_3_names_the_value(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("stage: 3\n")
    status, err = _run(capsys, ["train", "--config", str(config)])
    assert status == 1
    assert err == "llava train: stage: 3 is not one of 1, 2"


def test_in_process_run_refuses_unknown_key_with_a_hint():
    from training.arguments import ConfigError
    from training.train import parse_config

    with pytest.raises(ConfigError, match=r"unknown option 'learning_rat' \(did you mean 'learning_rate'\?\)"):
        parse_config({"learning_rat": 0.1})
    with pytest.raises(ConfigError, match="on_bad_data: 'drop' is not one of error, skip"):
        parse_config({"on_bad_data": "drop"})


@pytest.fixture
def failing_subcommand(monkeypatch):
    """A subcommand `boom` whose main raises an error we did not anticipate."""
    module = types.ModuleType("boom_subcommand")

    def main(argv):
        raise TypeError("can only concatenate str (not 'list') to str")

    module.main = main
    monkeypatch.setitem(sys.modules, "boom_subcommand", module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "boom", ("boom_subcommand", "fails"))
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)


def test_unexpected_error_is_one_line_naming_its_type_and_the_debug_switch(failing_subcommand, capsys):
    status, err = _run(capsys, ["boom"])
    assert status == 1
    assert err.startswith("llava boom: TypeError: can only concatenate") and "\n" not in err
    assert "llava --debug" in err and "LLAVA_DEBUG=1" in err


def test_debug_flag_and_environment_show_the_traceback(failing_subcommand, monkeypatch):
    with pytest.raises(TypeError):
        cli.main(["--debug", "boom"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(TypeError):
        cli.main(["boom"])


def test_debug_after_the_subcommand_is_the_subcommands_own(monkeypatch):
    """`llava train ... --debug underflow_overflow` is transformers' TrainingArguments.debug, not the switch."""
    seen = []
    module = types.ModuleType("echo_subcommand")
    module.main = lambda argv: seen.append(argv) or 0
    monkeypatch.setitem(sys.modules, "echo_subcommand", module)
    monkeypatch.setitem(cli.SUBCOMMANDS, "echo", ("echo_subcommand", "echoes"))
    assert cli.main(["echo", "--debug", "underflow_overflow"]) == 0
    assert seen == [["--debug", "underflow_overflow"]]


def test_a_wrongly_typed_yaml_value_is_one_error_line_without_the_usage_dump(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("stage: two\n")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--config", str(config)])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and err.count("\n") == 0
    assert "argument --stage: invalid int value: 'two'" in err and "llava train --help" in err
