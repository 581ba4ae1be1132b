"""What the demo prints while it runs: the step it is in, the elapsed time, and training progress with an ETA."""

from __future__ import annotations

import time
from dataclasses import dataclass

from transformers import TrainerCallback


@dataclass
class Step:
    """Prints what stage the demo is in, how far it is, and the elapsed time."""

    started: float

    def __call__(self, message: str) -> None:
        print(f"[demo {time.time() - self.started:6.0f}s] {message}", flush=True)


class ProgressCallback(TrainerCallback):
    """Prints step, loss and ETA of a training run about ten times per run."""

    def __init__(self, name: str, log: Step):
        self.name, self.log, self.started = name, log, time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs or not state.max_steps:
            return
        done = state.global_step
        if done % max(state.max_steps // 10, 1) and done != state.max_steps:
            return
        eta = (time.time() - self.started) / max(done, 1) * (state.max_steps - done)
        self.log(f"{self.name}: step {done}/{state.max_steps}, loss {logs['loss']:.3f} (ETA {eta:.0f}s)")
