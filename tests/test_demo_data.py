"""The offline demo's data: synthetic scenes, the template teacher, held-out questions and answer extraction."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image

from demo.data import build_demo_data, stage2_scene_selection
from demo.scenes import COLORS, POSITIONS, random_scene, read_scenes, write_scenes
from demo.teacher import ANSWER_VOCABULARIES, SHORT_ANSWER_SUFFIX, TemplateTeacher, exact_questions, short_answer
from evaluation.exact_match import Prediction, accuracy_by_type, counts_by_type, extract_answer
from datagen.instructions import brief_instructions, detail_instructions


def test_scene_pixels_show_each_object_in_its_colour_and_column():
    rng = random.Random(3)
    for index in range(20):
        scene, image = random_scene(f"s{index}", rng, image_size=64)
        pixels = np.asarray(image).astype(int)
        assert 1 <= len(scene.objects) <= 3
        assert len({obj.position for obj in scene.objects}) == len(scene.objects)
        for obj in scene.objects:
            x1, y1, x2, y2 = (round(v * 64) for v in obj.bbox)
            centre = pixels[(y1 + y2) // 2 + (y2 - y1) // 6, (x1 + x2) // 2]  # inside every shape type
            assert np.abs(centre - np.array(COLORS[obj.color])).max() <= 1, (obj, centre)
            column = POSITIONS.index(obj.position)
            assert column * 64 / 3 - 3 <= (x1 + x2) / 2 <= (column + 1) * 64 / 3 + 3


def test_scene_rows_restrict_where_objects_sit_vertically():
    rng = random.Random(5)
    def rows_used(rows):
        used = set()
        for index in range(40):
            scene, _ = random_scene(f"s{index}", rng, image_size=48, rows=rows)
            used |= {int((obj.bbox[1] + obj.bbox[3]) / 2 * 3) for obj in scene.objects}
        return used
    assert rows_used((0, 1, 2)) == {0, 1, 2}
    assert rows_used((1,)) == {1}


def test_write_scenes_coco_files_agree_with_the_scenes(tmp_path):
    scenes = write_scenes(tmp_path, count=5, seed=1, image_size=48)
    instances = json.loads((tmp_path / "instances.json").read_text())
    captions = json.loads((tmp_path / "captions.json").read_text())
    assert len(instances["images"]) == 5 and len(captions["annotations"]) == 25
    assert len(instances["annotations"]) == sum(len(s.objects) for s in scenes)
    assert read_scenes(tmp_path)[0] == scenes[0]
    for entry in instances["images"]:
        assert Image.open(tmp_path / entry["file_name"]).size == (48, 48)


def test_exact_questions_have_one_true_answer():
    rng = random.Random(0)
    for index in range(30):
        scene, _ = random_scene(str(index), rng, 64)
        for question in exact_questions(scene):
            assert question.answer in ANSWER_VOCABULARIES[question.type]
            if question.type == "color":
                shape = question.question.split("the ")[1].split("?")[0]
                assert len(scene.objects_with_shape(shape)) == 1


def test_template_teacher_writes_three_response_types_that_are_true_of_the_scene():
    rng = random.Random(2)
    teacher = TemplateTeacher(list(detail_instructions()))
    scene, _ = random_scene("x", rng, 64)
    conversation = teacher.write("conversation", scene, rng)
    truths = {(q.question, q.answer.capitalize() + ".") for q in exact_questions(scene)}
    assert 1 <= len(conversation) <= 4 and set(conversation) <= truths
    detail = teacher.write("detail", scene, rng)
    assert detail[0][0] in detail_instructions()
    assert all(obj.name in detail[0][1] for obj in scene.objects)
    complex_turn = teacher.write("complex", scene, rng)
    assert len(complex_turn) == 1 and len(complex_turn[0][1]) > 40


def test_an_every_question_conversation_asks_each_question_once_as_the_held_out_questions_do():
    rng = random.Random(5)
    teacher = TemplateTeacher(list(detail_instructions()), conversation_turns=None)
    for index in range(30):
        scene, _ = random_scene(f"s{index}", rng, 48)
        turns = teacher.conversation(scene, rng)
        expected = {q.question: short_answer(q.answer) for q in exact_questions(scene)}
        assert all(question.endswith(f" {SHORT_ANSWER_SUFFIX}") for question, _ in turns)
        assert len(turns) == len(expected) and dict(turns) == expected


def scenes_with(object_counts: list[int]) -> list:
    """Scenes (from the generator) with the given numbers of objects, in that order."""
    rng, pool = random.Random(0), {1: [], 2: [], 3: []}
    while any(len(pool[n]) < object_counts.count(n) for n in pool):
        scene, _ = random_scene(f"s{sum(map(len, pool.values()))}", rng, 48)
        pool[len(scene.objects)].append(scene)
    return [pool[n].pop() for n in object_counts]


def test_stage2_scene_selection_favours_multi_object_scenes_in_order():
    scenes = scenes_with([1, 2, 1, 1, 3, 1, 2, 1, 3, 1])
    chosen = stage2_scene_selection(scenes, 5, single_object_share=0.2)
    assert [len(s.objects) for s in chosen] == [1, 2, 3, 2, 3]  # order kept; 1 of 5 single-object
    assert chosen == [s for s in scenes if s in chosen]
    # too few multi-object scenes: single-object ones fill the count
    assert [len(s.objects) for s in stage2_scene_selection(scenes, 7, single_object_share=0.0)] == [1, 2, 1, 1, 3, 2, 3]
    assert len(stage2_scene_selection(scenes, 10, 0.5)) == 10
    with pytest.raises(ValueError, match="11 stage-2 scenes asked for, only 10"):
        stage2_scene_selection(scenes, 11, 0.2)
    with pytest.raises(ValueError, match="single_object_share"):
        stage2_scene_selection(scenes, 5, 1.5)


def test_build_demo_data_writes_llava_json_and_is_reused(tmp_path):
    data = build_demo_data(tmp_path, train_scenes=12, eval_scenes=4, seed=0, image_size=48)
    stage1 = json.loads(data.stage1.read_text())
    stage2 = json.loads(data.stage2.read_text())
    assert len(stage1) == 12 and len(stage2) == 24
    first_turn = stage1[0]["conversations"][0]["value"]
    assert "<image>" in first_turn and first_turn.replace("<image>", "").strip() in brief_instructions()
    assert {record["type"] for record in stage2} <= {"conversation", "detail", "complex"}
    for record in stage2:
        assert record["conversations"][0]["value"].count("<image>") == 1
        assert all("<image>" not in turn["value"] for turn in record["conversations"][1:])
        assert (tmp_path / record["image"]).is_file()
    questions = [json.loads(line) for line in data.eval_questions.read_text().splitlines()]
    assert {q["type"] for q in questions} <= {"color", "shape", "count"}
    before = data.stage2.stat().st_mtime_ns
    build_demo_data(tmp_path, train_scenes=12, eval_scenes=4, seed=0, image_size=48)
    assert data.stage2.stat().st_mtime_ns == before


def test_stage_subsets_take_the_first_training_scenes(tmp_path):
    data = build_demo_data(tmp_path, train_scenes=12, eval_scenes=2, seed=0, image_size=48, stage2_samples_per_scene=1,
                           stage1_scenes=6, stage2_scenes=9)
    stage1 = json.loads(data.stage1.read_text())
    stage2 = json.loads(data.stage2.read_text())
    assert sorted(record["image"] for record in stage1) == [f"train/images/train-{i:05d}.png" for i in range(6)]
    assert sorted(record["image"] for record in stage2) == [f"train/images/train-{i:05d}.png" for i in range(9)]
    coco = json.loads((tmp_path / "train" / "captions.json").read_text())
    assert len(coco["images"]) == 12  # every training scene keeps its captions (the tower's pretraining set)


def test_stage2_selection_and_image_first_reach_the_written_data(tmp_path):
    data = build_demo_data(tmp_path, train_scenes=24, eval_scenes=2, seed=0, image_size=48, stage2_samples_per_scene=1,
                           stage2_scenes=10, stage2_single_object_share=0.1, stage2_image_first=True,
                           teacher=TemplateTeacher(list(detail_instructions()), conversation_turns=None))
    scenes = {scene.id: scene for scene in read_scenes(tmp_path / "train")}
    stage2 = json.loads(data.stage2.read_text())
    objects = [len(scenes[record["image"].split("/")[-1].removesuffix(".png")].objects) for record in stage2]
    assert len(stage2) == 10 and objects.count(1) == 1
    assert all(record["conversations"][0]["value"].startswith("<image>\n") for record in stage2)
    for record in stage2:
        if record["type"] == "conversation":
            scene = scenes[record["image"].split("/")[-1].removesuffix(".png")]
            assert len(record["conversations"]) == 2 * len(exact_questions(scene))


def test_answer_extraction_and_accuracy():
    colors = ANSWER_VOCABULARIES["color"]
    assert extract_answer("Red.", colors) == "red"
    assert extract_answer("The circle is blue, not red.", colors) == "blue"
    assert extract_answer("I cannot see images.", colors) == ""
    assert extract_answer("Three.") == "three"
    predictions = [
        Prediction("a", "color", "q", "red", "Red.", "i", "red"),
        Prediction("b", "color", "q", "blue", "Green.", "i", "green"),
        Prediction("c", "count", "q", "two", "Two.", "i", "two"),
    ]
    scores = accuracy_by_type(predictions)
    assert scores == {"color": 0.5, "count": 1.0, "overall": 2 / 3}
    assert counts_by_type(predictions) == {"color": (1, 2), "count": (1, 1), "overall": (2, 3)}


def test_the_first_held_out_scenes_ask_what_a_smaller_held_out_set_asks(tmp_path):
    from demo.data import questions_of_first_scenes
    from evaluation.exact_match import read_questions

    larger = read_questions(build_demo_data(tmp_path / "a", 4, 7, seed=3, image_size=48).eval_questions)
    smaller = read_questions(build_demo_data(tmp_path / "b", 4, 3, seed=3, image_size=48).eval_questions)
    assert questions_of_first_scenes(larger, 3) == smaller
    assert questions_of_first_scenes(larger, 7) == larger and len(larger) > len(smaller)
