"""Build the offline demo's data: synthetic scenes -> stage-1 pairs, stage-2 instructions, held-out questions.

Training scenes become (a) stage-1 data: one caption per image expanded with a Table 8 instruction
(`datagen.instructions.expand_caption_pairs`), and (b) stage-2 data of the paper's three response
types written by a teacher (by default the deterministic `TemplateTeacher`), mixed with configurable
proportions. Held-out scenes become questions with one true answer for exact-match accuracy.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from datagen.instructions import detail_instructions, expand_caption_pairs, place_image_token
from datagen.prompting import RESPONSE_TYPES
from demo.scenes import ROWS, Scene, captions, write_scenes
from demo.teacher import TemplateTeacher, exact_questions
from processing.files import write_json, write_text


@dataclass(frozen=True)
class DemoData:
    root: Path
    stage1: Path  # LLaVA JSON
    stage2: Path  # LLaVA JSON
    eval_questions: Path  # JSONL: id, image, type, question, answer
    image_root: Path


def stage2_records(
    scenes: list[Scene],
    rng: random.Random,
    teacher: TemplateTeacher,
    proportions: dict[str, float],
    samples_per_scene: int,
    image_first: bool = False,
) -> list[dict]:
    """Teacher-written samples; each draws its response type by `proportions` (paper: 58K/23K/77K). The image goes
    before or after the first question at random (paper eq. 2), or always before it with `image_first`."""
    kinds, weights = zip(*[(kind, proportions.get(kind, 0.0)) for kind in RESPONSE_TYPES])
    records = []
    for scene in scenes:
        for index in range(samples_per_scene):
            kind = rng.choices(kinds, weights=weights)[0]
            turns = teacher.write(kind, scene, rng)
            conversations = []
            for turn, (question, answer) in enumerate(turns):
                value = place_image_token(question, rng, image_first) if turn == 0 else question
                conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]
            records.append(
                {"id": f"{scene.id}-{kind}-{index}", "image": f"train/images/{scene.id}.png", "type": kind,
                 "conversations": conversations}
            )
    rng.shuffle(records)
    return records


def build_demo_data(
    root: str | Path,
    train_scenes: int,
    eval_scenes: int,
    seed: int = 0,
    image_size: int = 64,
    stage2_samples_per_scene: int = 2,
    proportions: dict[str, float] | None = None,
    stage2_scenes: int | None = None,
    stage1_scenes: int | None = None,
    rows: tuple[int, ...] = ROWS,
    teacher: TemplateTeacher | None = None,
    stage2_single_object_share: float | None = None,
    stage2_image_first: bool = False,
) -> DemoData:
    """Write scenes, stage-1/2 LLaVA JSON and held-out questions under `root` (reused when present).

    Stage 1 gets one caption per scene of the first `stage1_scenes` training scenes and stage 2 draws its samples
    from `stage2_scenes` of them (both default: all): the first ones, or with `stage2_single_object_share` set,
    multi-object scenes first and single-object ones only up to that share (`stage2_scene_selection`). Every
    training scene keeps its five COCO captions (`train/captions.json`). `teacher` writes stage 2 (default: a
    `TemplateTeacher` with the paper's Table 9 detail instructions); `stage2_image_first`: see `stage2_records`.
    """
    root = Path(root)
    data = DemoData(root, root / "stage1.json", root / "stage2.json", root / "eval_questions.jsonl", root)
    if all(path.is_file() for path in (data.stage1, data.stage2, data.eval_questions)):
        return data
    rng = random.Random(seed)
    train = write_scenes(root / "train", train_scenes, seed=seed, image_size=image_size, prefix="train", rows=rows)
    held_out = write_scenes(root / "eval", eval_scenes, seed=seed + 1, image_size=image_size, prefix="eval", rows=rows)

    stage1_source = train[:stage1_scenes] if stage1_scenes is not None else train
    pairs = [{"id": s.id, "image": f"train/images/{s.id}.png", "caption": captions(s, rng, 1)[0]} for s in stage1_source]
    write_json(data.stage1, expand_caption_pairs(pairs, seed=seed), indent=1)
    teacher = teacher or TemplateTeacher(list(detail_instructions()))
    proportions = proportions or {"conversation": 0.6, "detail": 0.15, "complex": 0.25}
    if stage2_single_object_share is None:
        stage2_source = train[:stage2_scenes] if stage2_scenes is not None else train
    else:
        stage2_source = stage2_scene_selection(train, stage2_scenes or len(train), stage2_single_object_share)
    write_json(data.stage2, stage2_records(stage2_source, rng, teacher, proportions, stage2_samples_per_scene, stage2_image_first), indent=1)

    lines = []
    for scene in held_out:
        for number, question in enumerate(exact_questions(scene)):
            lines.append(json.dumps({"id": f"{scene.id}-q{number}", "image": f"eval/images/{scene.id}.png",
                                     "type": question.type, "question": question.question, "answer": question.answer}))
    write_text(data.eval_questions, "\n".join(lines) + "\n")
    return data


def stage2_scene_selection(scenes: list[Scene], count: int, single_object_share: float) -> list[Scene]:
    """`count` of `scenes` (in their order): single-object scenes make up `single_object_share` of them, multi-object
    scenes the rest; where one kind runs short the other fills in.

    A one-object scene teaches reading colour and shape, nothing about *which* object a question is about; stage 2
    is where the LLM learns that binding, so its images favour scenes with several objects (as the paper's stage-2
    images are a curated subset of its stage-1 images).
    """
    if not 0.0 <= single_object_share <= 1.0:
        raise ValueError(f"single_object_share must be in [0, 1], got {single_object_share}")
    if count > len(scenes):
        raise ValueError(f"{count} stage-2 scenes asked for, only {len(scenes)} training scenes")
    single = [scene for scene in scenes if len(scene.objects) == 1]
    multi = [scene for scene in scenes if len(scene.objects) > 1]
    singles = min(max(round(count * single_object_share), count - len(multi)), len(single))
    chosen = {scene.id for scene in single[:singles] + multi[: count - singles]}
    return [scene for scene in scenes if scene.id in chosen]


def questions_of_first_scenes(questions: list[dict], scenes: int) -> list[dict]:
    """The held-out questions about the first `scenes` held-out scenes. The scenes are drawn one after another from
    one seed, so these are the very questions a held-out set of `scenes` scenes would have."""
    return [question for question in questions if int(Path(question["image"]).stem.rsplit("-", 1)[1]) < scenes]
