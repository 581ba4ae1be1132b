"""The demo's console: one progress line per phase, the Trainer's per-step dictionaries kept off it (they still
reach `log_history` and TensorBoard)."""

from __future__ import annotations

import io
import re
import time

import torch
import yaml
from conftest import REPO_ROOT
from torch import nn
from training_fixtures import chat_records, save_tiny_model, write_dataset, write_images
from transformers import Trainer, TrainingArguments

from demo.progress import PhaseLine, PhaseProgress, Step
from training.train import run, silence_console

DICT_LINE = re.compile(r"^\{'(loss|train_runtime)'")


class TinyRegression(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Linear(4, 1)

    def forward(self, x, y):
        return {"loss": ((self.weight(x).squeeze(-1) - y) ** 2).mean()}


def tiny_trainer(tmp_path, disable_tqdm: bool, callbacks) -> Trainer:
    torch.manual_seed(0)
    data = [{"x": torch.randn(4), "y": torch.tensor(1.0)} for _ in range(12)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=2, logging_steps=1,
        report_to="none", save_strategy="no", use_cpu=True, disable_tqdm=disable_tqdm, dataloader_pin_memory=False,
    )
    return Trainer(model=TinyRegression(), args=args, train_dataset=data, callbacks=callbacks)


def test_trainer_prints_its_dicts_unless_silenced_and_the_phase_prints_one_line(tmp_path, capsys):
    loud = tiny_trainer(tmp_path, disable_tqdm=True, callbacks=[])
    loud.train()
    assert sum(bool(DICT_LINE.match(line)) for line in capsys.readouterr().out.splitlines()) >= 6  # what we remove

    quiet = tiny_trainer(tmp_path, disable_tqdm=True, callbacks=[PhaseProgress("tiny phase", Step(time.time()))])
    silence_console(quiet)
    quiet.train()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"\[demo +\d+s\] tiny phase: 6/6 steps, loss \d+\.\d{3} -> \d+\.\d{3}, \d+s", lines[0])
    assert len([entry for entry in quiet.state.log_history if "loss" in entry]) == 6  # per-step logs kept


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_line_is_rewritten_in_place():
    screen = Terminal()
    line = PhaseLine(Step(time.time()), screen)
    line.update("stage 1: step 1/50, loss 3.100 (ETA 40s)")
    line.update("stage 1: step 2/50")
    line.finish("stage 1: 50/50 steps")
    text = screen.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 3
    # a shorter update blanks what the longer one left on screen
    assert text.split("\r")[2].endswith(" " * len(", loss 3.100 (ETA 40s)"))


def test_a_quiet_llava_stage_prints_one_line_and_logs_to_tensorboard(tmp_path, capfd):
    write_dataset(tmp_path / "chats.json", chat_records(write_images(tmp_path / "images"), repeats=1))
    save_tiny_model(tmp_path / "base")
    config = yaml.safe_load((REPO_ROOT / "training" / "configs" / "tiny_stage2.yaml").read_text())
    config.update(model_name_or_path=str(tmp_path / "base"), data_path=str(tmp_path / "chats.json"),
                  image_root=str(tmp_path / "images"), output_dir=str(tmp_path / "stage2"), max_steps=3,
                  logging_steps=1, report_to="tensorboard")
    capfd.readouterr()
    output = run(config, callbacks=[PhaseProgress("stage 2", Step(time.time()))], quiet=True)
    captured = capfd.readouterr()
    lines = captured.out.splitlines()
    assert [line for line in lines if "stage 2" in line] == lines and len(lines) == 1, lines
    assert not any("{'" in line for line in lines) and "| 3/3 [" not in captured.err  # no dicts, no training bar
    assert len(output.losses) == 3
    assert list((tmp_path / "stage2" / "runs").rglob("events.out.tfevents.*"))
