"""The demo's design choices, and the settings a run directory is keyed by.

Why each choice was made, and what it measured, is in docs/benchmarks.md ("Offline demo" and the rounds of "Demo
learning experiments"); the comments here say which round.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from demo.tower import TowerPretraining

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"

# Stage 1 sees one caption per scene of the first `stage1_fraction` of the training scenes (batch 8), stage 2 one
# teacher sample per scene of `stage2_fraction` of them (default: 50 + 163 steps; their run time is in
# docs/benchmarks.md, "Offline demo"). The tower's CLIP pretraining sees every training scene's captions.
#
# The held-out set: `eval_scenes` scenes score the final model (after stage 2); the evaluations before training and
# after stage 1, which only show where the model starts from, score the first `progress_eval_scenes` of them (the
# same questions for both). A scene yields one count question, one shape question per object (2 on average) and
# one colour question per object whose shape is unique (11/9 on average), so count has the fewest questions: 250
# scenes give 250 count, ~300 colour and ~500 shape questions, enough for a 95% Wilson interval of at most ±5
# points at 80% accuracy (it needs n >= 246) — 40 scenes gave 40 / 44 / 73, ±12 points
# (docs/benchmarks.md, "A held-out set sized for ±5 points").
PRESETS = {
    "quick": dict(train_scenes=96, eval_scenes=10, progress_eval_scenes=10, stage1_fraction=1.0, stage1_epochs=1, stage2_fraction=0.75, stage2_epochs=1),
    "default": dict(train_scenes=1600, eval_scenes=250, progress_eval_scenes=40, stage1_fraction=0.25, stage1_epochs=1, stage2_fraction=0.8125, stage2_epochs=1),
    "full": dict(train_scenes=4800, eval_scenes=500, progress_eval_scenes=150, stage1_fraction=1.0, stage1_epochs=1, stage2_fraction=1.0, stage2_epochs=1),
}
# Mostly short-answer conversations (cheap, dense supervision), with the paper's other two types kept in the mix.
STAGE2_PROPORTIONS = {"conversation": 0.92, "detail": 0.04, "complex": 0.04}
# How stage 2 teaches the model to find an object by its shape (docs/benchmarks.md, "Ninth round", "Tenth round"):
# - four questions per conversation (all of a one-object scene's three): several questions about one scene contrast
#   its objects, and a fixed number keeps the samples of a batch about as long, so little of a step is padding
#   (every question of a three-object scene makes samples over twice as long as a one-object scene's);
# - multi-object scenes first, one-object scenes at most a fifth (they teach nothing about which object is meant);
# - the image before the first question in every sample (paper eq. 2 places it at random);
# - the projector starts from the patches' colour and category words only: with the column words too, colour was
#   read worse after stage 2 in the designs tried ("Column words cost colour").
CONVERSATION_TURNS: tuple[int, int] | None = (4, 4)
STAGE2_SINGLE_OBJECT_SHARE: float | None = 0.2
STAGE2_IMAGE_FIRST = True
PROJECTOR_COLUMN_WORDS = False
# A 48 px canvas of 3x3 cells and 16 px patches: 9 image tokens, one object per patch (see demo.scenes).
IMAGE_SIZE = 48
PATCH_SIZE = 16
# Questions answered per generate call when scoring: decoding a 135M model on a CPU is bound by reading its weights,
# so a batch of 64 costs little more per step than one of 16 and scores the held-out set ~1.4x faster, with the same
# answers (docs/benchmarks.md, "Evaluation batch size").
EVAL_BATCH_SIZE = 64
# The CLIP tower, pretrained on the training captions and boxes (demo.tower), then frozen in both stages.
TOWER = dict(
    hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
    image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, projection_dim=256,
)
# Objects sit in the middle row (columns, sizes and jitter still vary): every question type scored higher after
# stage 2 than with random rows (docs/benchmarks.md, "Second round: what limits the demo now").
SCENE_ROWS = (1,)
TOWER_PRETRAINING = TowerPretraining()
# The modules whose text decides the cached data, tower and projector start (hashed into the run settings).
DATA_GENERATOR_MODULES = ("scenes.py", "teacher.py", "data.py")
TOWER_AND_PROJECTOR_MODULES = ("tower.py", "projector.py")


def stage_config_file(stage: int) -> Path:
    """The shipped training config of demo stage `stage` (1 or 2)."""
    return CONFIG_DIR / f"demo_stage{stage}.yaml"


def run_settings(preset_name: str, preset: dict, seed: int) -> dict:
    """Everything the cached steps depend on: preset, seed, tower and scene layout, and the text of the data
    generator, of the tower's pretraining and the projector's start, and of the two stage configs (hashed, so that
    editing any of them invalidates a run directory instead of mixing runs)."""

    def digest(*paths: Path) -> str:
        return hashlib.sha256(b"".join(path.read_bytes() for path in paths)).hexdigest()[:16]

    return {
        "preset": preset_name, **preset, "seed": seed, "tower": TOWER, "tower_pretraining": asdict(TOWER_PRETRAINING),
        "scene_rows": list(SCENE_ROWS), "stage2_proportions": STAGE2_PROPORTIONS,
        "conversation_turns": CONVERSATION_TURNS and list(CONVERSATION_TURNS),  # as JSON reads it back
        "stage2_single_object_share": STAGE2_SINGLE_OBJECT_SHARE,
        "stage2_image_first": STAGE2_IMAGE_FIRST, "projector_column_words": PROJECTOR_COLUMN_WORDS,
        "data_generator": digest(*(PACKAGE_DIR / name for name in DATA_GENERATOR_MODULES)),
        "tower_and_projector_start": digest(*(PACKAGE_DIR / name for name in TOWER_AND_PROJECTOR_MODULES)),
        **{f"demo_stage{stage}.yaml": digest(stage_config_file(stage)) for stage in (1, 2)},
    }


def check_run_settings(out: Path, settings: dict) -> None:
    """Refuse to resume a run made with other settings: its cached data, checkpoints and scores would be reused
    silently (e.g. `--full` into a default run's directory). Nothing is deleted; the user picks another directory."""
    path = out / "run_settings.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        changed = sorted(key for key in previous.keys() | settings.keys() if previous.get(key) != settings.get(key))
        if changed:
            details = "; ".join(f"{key}: {previous.get(key)!r} there, {settings.get(key)!r} now" for key in changed)
            raise SystemExit(f"llava demo: {out} holds a run made with other settings ({details}). "
                             "Use another --output-dir, or delete that directory to start over.")
        return
    if any(out.iterdir()):
        raise SystemExit(f"llava demo: {out} is not empty and has no run_settings.json (not a demo run directory, or "
                         "one from an older version). Use another --output-dir, or delete it to start over.")
    path.write_text(json.dumps(settings, indent=1))


def mixed_precision_overrides() -> dict:
    """bf16 autocast on CPUs with native bf16 (`training.arguments.cpu_has_native_bf16`); elsewhere the stage
    configs' own precision (on GPUs: bf16 where supported)."""
    import torch

    from training.arguments import cpu_has_native_bf16

    return {"bf16": True, "use_cpu": True} if not torch.cuda.is_available() and cpu_has_native_bf16() else {}
