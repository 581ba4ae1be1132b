"""The demo's own stage 2, packed against padded: the same steps over the same samples, interleaved in one run.

    python benchmarks/bench_demo_packing.py RUN_DIR [--steps 24] [--rounds 2]

RUN_DIR is a finished `llava demo` run (its `data/` and `stage1/` are the start). Each round trains stage 2 from
that stage-1 model for `--steps` optimiser steps through the demo's own code path (`demo.main.train_stage`: the
shipped `demo_stage2.yaml`, modality-length grouping, bf16 autocast where the CPU has it), once padded and once
with `packing: true`; packing keeps every step's samples, so the ratio of the Trainer's runtimes is the ratio of
tokens/s. Prints every round and the median ratio (the machine is shared: rounds spread).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from demo.data import DemoData
from demo.main import quiet_console, train_stage
from demo.progress import Step


def runtime(run_dir: Path, out: Path, steps: int, packing: bool) -> tuple[float, float]:
    """(Trainer runtime in seconds, final training loss) of `steps` stage-2 steps."""
    root = run_dir / "data"
    data = DemoData(root, root / "stage1.json", root / "stage2.json", root / "eval_questions.jsonl", root)
    settings = json.loads((run_dir / "run_settings.json").read_text())
    train_stage(2, run_dir / "stage1", data, out, {"stage2_epochs": 1}, settings["seed"], Step(time.time()),
                overrides={"max_steps": steps, "packing": packing}, name=f"stage 2 ({'packed' if packing else 'padded'})")
    history = json.loads((out / "log_history.json").read_text())
    return history[-1]["train_runtime"], history[-1]["train_loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    quiet_console()
    ratios = []
    with tempfile.TemporaryDirectory() as scratch:
        for round_number in range(args.rounds):
            times = {}
            for packing in (False, True):
                out = Path(scratch) / f"round{round_number}-{'packed' if packing else 'padded'}"
                times[packing] = runtime(args.run_dir, out, args.steps, packing)
            ratios.append(times[False][0] / times[True][0])
            print(f"round {round_number + 1}: padded {times[False][0]:.1f} s (loss {times[False][1]:.4f}), packed "
                  f"{times[True][0]:.1f} s (loss {times[True][1]:.4f}): packed {ratios[-1]:.2f}x", flush=True)
    print(f"packed vs padded tokens/s over {args.steps} steps: median {statistics.median(ratios):.2f}x "
          f"(rounds {', '.join(f'{r:.2f}' for r in ratios)})")


if __name__ == "__main__":
    main()
