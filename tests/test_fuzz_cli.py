"""Property-based fuzzing (hypothesis) of the console script: arbitrary YAML configs for `llava train` and arbitrary
arguments for every subcommand that runs unattended.

The property is the console's contract (llava_cli/main.py): whatever the input, `llava ...` ends with status 0, 1 or
2; on failure it prints one line that is ours (argparse's `prog: error: ...` after its usage, or a subcommand's own
message), never a traceback and never the console's fallback for an exception nobody anticipated (the line that
suggests `llava --debug`). Training itself is replaced by a sentinel: a config that parses is a valid config.
Profiles as in tests/fuzz_strategies.py (`HYPOTHESIS_PROFILE=deep` for many more examples).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
from dataclasses import fields

import pytest
import yaml
from fuzz_strategies import fuzz_settings
from hypothesis import event, given
from hypothesis import strategies as st

from llava_cli import main as cli

# Subcommands left out: `demo` trains for minutes, `serve` and `chat` wait for a user, `push` uploads, and
# `generate-data` loads a teacher LLM; their parsing is shared with the ones here or covered by their own tests.
UNATTENDED = ["answer", "build", "coco-contexts", "convert", "eval judge", "eval scienceqa", "eval pope", "eval exact-match",
              "expand-captions", "export", "filter-captions", "mix-data", "preflight", "train", "validate"]
FALLBACK_MARKER = f"`llava {cli.DEBUG_FLAG} ...`"


class ReachedTraining(BaseException):
    """Raised in place of training: the console's `except Exception` lets it through."""


@pytest.fixture
def console(tmp_path, monkeypatch):
    """Run `llava ARGV` in-process, offline, in an empty working directory; return (status, stderr lines that are
    not warnings, or the end of stdout when a failure wrote only there)."""
    import huggingface_hub.constants

    import training.train

    def reached(*args, **kwargs):
        raise ReachedTraining

    monkeypatch.setattr(training.train, "train", reached)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv(cli.DEBUG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)

    def run(argv):
        err, out = io.StringIO(), io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                status = cli.main(argv)
        except ReachedTraining:
            status = "trained"
        except SystemExit as exit_:
            status = exit_.code
        # split at newlines only: str.splitlines also splits at \x1c-\x1e, \x85, \u2028 a fuzzed path may hold
        lines = [line for line in err.getvalue().split("\n") if line.strip() and "Warning" not in line]
        if not lines and status not in (0, "trained"):
            lines = [f"(stdout) {out.getvalue().strip()[-200:]}"]  # a report on stdout (preflight's) says why
        return status, lines

    return run


def assert_one_clear_line(status, lines, argv) -> None:
    assert status in (0, 1, 2, "trained"), (argv, status, lines)
    text = "\n".join(lines)
    assert "Traceback" not in text and FALLBACK_MARKER not in text, (argv, text)
    if status == 2 and lines and lines[0].startswith("usage:"):
        lines = [line for line in lines if ": error: " in line]  # argparse: the usage, then one error line
    if status in (1, 2):
        assert len(lines) == 1, (argv, text)


# --------------------------------------------------------------------------------------------------------------------
# `llava train --config FILE.yaml`
# --------------------------------------------------------------------------------------------------------------------
def _option_names() -> list[str]:
    from training.arguments import LlavaSFTConfig, LlavaTrainArguments

    return sorted(spec.name for dataclass_type in (LlavaTrainArguments, LlavaSFTConfig) for spec in fields(dataclass_type))


yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["", "2", "1e-3", "two", "../..", "/nonexistent", "none", "auto", "cpu"]),
)
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=6), inner, max_size=3), max_leaves=6)
# `env` is left out: TRL copies it into os.environ, which would change the test process itself.
config_keys = st.one_of(st.sampled_from(_option_names()), st.text(max_size=14)).filter(lambda key: key != "env")
config_texts = st.one_of(
    st.dictionaries(config_keys, yaml_values, max_size=4).map(lambda config: yaml.safe_dump(config, allow_unicode=True)),
    st.text(max_size=40),  # arbitrary text: YAML syntax errors, scalars, lists
    st.sampled_from(["{", "a: [", ": :", "\t- x", "[1, 2]", "null", "3", "stage: 1\nstage: 2", "!!python/object:os.system {}"]),
)


@fuzz_settings(ci_examples=300)
@given(text=config_texts, binary=st.booleans())
def test_any_yaml_config_is_trained_or_refused_in_one_line(console, tmp_path, text, binary):
    config = tmp_path / "run.yaml"
    config.write_bytes(text.encode("utf-8", "surrogatepass") if not binary else b"\xff\xfe" + text.encode("utf-16-le", "surrogatepass"))
    argv = ["train", "--config", str(config)]
    status, lines = console(argv)
    event(f"status {status}")
    assert_one_clear_line(status, lines, argv)


def test_the_fuzzed_failures_name_their_key(console, tmp_path):
    """Cases the fuzzing found crashing deep inside TrainingArguments, now refused at the key."""
    config = tmp_path / "run.yaml"
    for text, expected in [
        ("output_dir: 0\n", "output_dir: expected str or null, found int 0"),
        ("warmup_steps: {a: 1}\n", "warmup_steps: expected float, found dict"),
        ("logging_steps: []\n", "logging_steps: expected float, found list"),
        ("ddp_timeout: null\n", "ddp_timeout: expected int, found NoneType None"),
        ("metric_for_best_model: 3\n", "metric_for_best_model: expected str or null, found int 3"),
        ("logging_steps: .inf\n", "cannot convert float infinity to integer"),
        ("{\n", "not valid YAML"),
    ]:
        config.write_text(text)
        status, lines = console(["train", "--config", str(config)])
        assert status == 1 and len(lines) == 1, (text, lines)
        assert lines[0].startswith(f"llava train: {config}: ") and expected in lines[0], (text, lines)


def test_python_api_checks_value_types_too():
    from training.arguments import ConfigError
    from training.train import parse_config

    with pytest.raises(ConfigError, match="config: output_dir: expected str or null, found int 0"):
        parse_config({"output_dir": 0})
    assert math.isclose(parse_config({"learning_rate": 1})[1].learning_rate, 1.0)  # an int is a valid float


# --------------------------------------------------------------------------------------------------------------------
# Every unattended subcommand's arguments
# --------------------------------------------------------------------------------------------------------------------
class _ParserSeen(BaseException):
    pass


def _parser_of(subcommand: str) -> argparse.ArgumentParser:
    """The parser a subcommand builds, caught when it starts parsing (the subcommands build their parsers inside
    `main`, so this is the one way to read every subcommand's options without a second list of them)."""
    name, *rest = subcommand.split()
    original = argparse.ArgumentParser.parse_known_args

    def seen(self, *args, **kwargs):
        raise _ParserSeen(self)

    argparse.ArgumentParser.parse_known_args = seen
    try:
        importlib.import_module(cli.SUBCOMMANDS[name][0]).main(rest)
    except _ParserSeen as caught:
        parser = caught.args[0]
        for action in parser._actions:  # `llava eval TASK`: the task's own parser
            if isinstance(action, argparse._SubParsersAction) and rest:
                return action.choices[rest[0]]
        return parser
    finally:
        argparse.ArgumentParser.parse_known_args = original
    raise AssertionError(f"llava {subcommand} never parsed its arguments")


@pytest.fixture(scope="module")
def parsers():
    return {subcommand: _parser_of(subcommand) for subcommand in UNATTENDED}


def test_every_unattended_subcommand_is_fuzzed():
    left_out = {"demo", "serve", "chat", "push", "generate-data"}
    assert {subcommand.split()[0] for subcommand in UNATTENDED} | left_out == set(cli.SUBCOMMANDS)


@st.composite
def command_lines(draw, parsers, files):
    subcommand = draw(st.sampled_from(UNATTENDED))
    actions = [action for action in parsers[subcommand]._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction, argparse._VersionAction))]
    required = [action for action in actions if action.required or not action.option_strings]
    optional = [action for action in actions if action not in required]
    chosen = required + draw(st.lists(st.sampled_from(optional), max_size=3, unique_by=id)) if optional else required
    chosen = draw(st.permutations(chosen))
    values = st.one_of(st.sampled_from(files), st.text(max_size=10),
                       st.sampled_from(["", "0", "-1", "2", "1e309", "nan", "true", "{}", "[1]", "../.."]))
    argv = subcommand.split()
    for action in chosen:
        if action.option_strings:
            argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs == 0:
            continue
        count = 1 if action.nargs in (None, "?") else draw(st.integers(1, 2))
        argv += draw(st.lists(values, min_size=count, max_size=count))
    return argv


@pytest.fixture
def files(tmp_path):
    """Paths a fuzzed argument may name: junk JSONL, an empty file, a folder, nothing, a NUL, a too-long name."""
    (tmp_path / "junk.jsonl").write_text('{"id": 1}\nnot json\n[1, 2]\n')
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "config.json").write_text("{")
    return [str(tmp_path / "junk.jsonl"), str(tmp_path / "empty.json"), str(tmp_path / "folder"),
            str(tmp_path / "missing" / "x.json"), "a\x00b", "x" * 300, "/"]


@fuzz_settings(ci_examples=400)
@given(data=st.data())
def test_any_arguments_end_in_one_clear_line(console, parsers, files, data):
    argv = data.draw(command_lines(parsers, files))
    status, lines = console(argv)
    event(f"{argv[0]}: status {status}")  # `pytest --hypothesis-show-statistics` shows how deep the runs got
    assert_one_clear_line(status, lines, argv)
