"""What the demo prints while it runs: the step it is in and the elapsed time, then one progress line per phase
(what, how far, loss, ETA).

On a terminal the phase's line is rewritten in place (`\\r`) as it advances; elsewhere (a log file, a pipe, CI) only
its final line is printed, so a captured run reads as one line per phase. The Trainer's per-step log dictionaries
stay out of the console: they go to `trainer.state.log_history` and the configs' `report_to` (TensorBoard).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO

from transformers import TrainerCallback


@dataclass
class Step:
    """Prints what stage the demo is in, how far it is, and the elapsed time."""

    started: float

    def prefix(self) -> str:
        return f"[demo {time.time() - self.started:6.0f}s]"

    def __call__(self, message: str) -> None:
        print(f"{self.prefix()} {message}", flush=True)


class PhaseLine:
    """One console line for one phase: `update` rewrites it on a terminal (and prints nothing elsewhere), `finish`
    prints its final state once."""

    def __init__(self, log: Step, stream: TextIO | None = None):
        self.log, self.stream = log, stream or sys.stdout
        self.interactive = self.stream.isatty()
        self.width = 0  # of the text on screen, to blank out what a shorter update leaves behind

    def update(self, message: str) -> None:
        if self.interactive:
            text = f"{self.log.prefix()} {message}"
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()
            self.width = len(text)

    def finish(self, message: str) -> None:
        text = f"{self.log.prefix()} {message}"
        self.stream.write(("\r" + text.ljust(self.width) if self.interactive else text) + "\n")
        self.stream.flush()
        self.width = 0


def eta(started: float, done: int, total: int) -> float:
    """Seconds left at the mean pace so far."""
    return (time.time() - started) / max(done, 1) * (total - done)


class PhaseProgress(TrainerCallback):
    """The progress line of one training phase: step, loss and ETA while it runs; steps, first and last loss and the
    time taken at the end. Pass it with `quiet=True` (`training.train.run`, `demo.tower.pretrain_tower`), which
    removes the Trainer's own console output."""

    def __init__(self, name: str, log: Step, stream: TextIO | None = None):
        self.name, self.line, self.started = name, PhaseLine(log, stream), time.time()
        self.first_loss = self.last_loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()
        self.line.update(f"{self.name}: step 0/{state.max_steps}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.last_loss = float(logs["loss"])
        if self.first_loss is None:
            self.first_loss = self.last_loss
        done, total = state.global_step, state.max_steps
        self.line.update(
            f"{self.name}: step {done}/{total}, loss {self.last_loss:.3f} (ETA {eta(self.started, done, total):.0f}s)"
        )

    def on_train_end(self, args, state, control, **kwargs):
        loss = "" if self.first_loss is None else f", loss {self.first_loss:.3f} -> {self.last_loss:.3f}"
        self.line.finish(f"{self.name}: {state.global_step}/{state.max_steps} steps{loss}, {time.time() - self.started:.0f}s")
