"""Batched answering: left-padded batches give the same answers as one-by-one, and an interrupted
run resumes without recomputing or losing predictions."""

from __future__ import annotations

import pytest
from evaluation_fixtures import save_tiny_image_text_model, write_questions

from inference.batch import BatchAnswerer, answer_question_file
from inference.loading import load_model_and_processor
from inference.messages import truncate_at_stops
from inference.settings import GenerationSettings
from processing.images import ImageLoadError
from processing.jsonio import read_records


@pytest.fixture(scope="module")
def tiny_answerer(tmp_path_factory):
    folder = save_tiny_image_text_model(tmp_path_factory.mktemp("tiny") / "model")
    model, processor = load_model_and_processor(str(folder), device="cpu", dtype="float32")
    return BatchAnswerer(model, processor, GenerationSettings(max_new_tokens=4))


class CountingAnswerer:
    """Wraps the real answerer, counts the questions it answers, and can fail on a given call."""

    def __init__(self, inner, fail_on_call=None):
        self.inner, self.fail_on_call = inner, fail_on_call
        self.calls, self.answered = 0, 0

    def __call__(self, conversations, images):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        self.answered += len(conversations)
        return self.inner(conversations, images)


def test_batched_answers_match_one_by_one(tmp_path, tiny_answerer):
    questions = write_questions(tmp_path / "q.jsonl", tmp_path, count=5)
    batched = answer_question_file(
        questions, tiny_answerer, tmp_path / "b.jsonl", image_root=tmp_path, batch_size=3, show_progress=False
    )
    single = answer_question_file(
        questions, tiny_answerer, tmp_path / "s.jsonl", image_root=tmp_path, batch_size=1, show_progress=False
    )
    assert {k: v["text"] for k, v in batched.items()} == {k: v["text"] for k, v in single.items()}
    assert all(v["text"] for v in batched.values())  # the model did generate something
    assert batched["q0"]["generation"] == {
        "max_new_tokens": 4, "temperature": 0.0, "top_p": None, "num_beams": 1, "compile": False
    }


def test_interrupted_answering_resumes_without_recomputing(tmp_path, tiny_answerer):
    questions = write_questions(tmp_path / "q.jsonl", tmp_path, count=5)  # 3 with an image, 2 text-only
    output = tmp_path / "predictions.jsonl"
    first = CountingAnswerer(tiny_answerer, fail_on_call=2)
    with pytest.raises(KeyboardInterrupt):
        answer_question_file(questions, first, output, image_root=tmp_path, batch_size=2, show_progress=False)
    kept = read_records(output)
    assert [r["question_id"] for r in kept] == ["q0", "q2"]  # the first batch survived the interruption

    # A crash in the middle of a write leaves a partial last line: it is dropped and recomputed.
    with open(output, "a") as handle:
        handle.write('{"question_id": "q4", "text": "half a reco')
    second = CountingAnswerer(tiny_answerer)
    predictions = answer_question_file(questions, second, output, image_root=tmp_path, batch_size=2, show_progress=False)
    assert second.answered == 3  # q4, q1, q3: nothing answered twice
    assert list(predictions) == ["q0", "q1", "q2", "q3", "q4"]
    final = read_records(output)
    assert sorted(r["question_id"] for r in final) == ["q0", "q1", "q2", "q3", "q4"]
    assert final[:2] == kept  # earlier predictions kept byte for byte

    reference = answer_question_file(
        questions, tiny_answerer, tmp_path / "ref.jsonl", image_root=tmp_path, batch_size=2, show_progress=False
    )
    assert {k: v["text"] for k, v in predictions.items()} == {k: v["text"] for k, v in reference.items()}

    with pytest.raises(ValueError, match="holds predictions of another model"):
        answer_question_file(questions, second, output, image_root=tmp_path, model_id="other-model", show_progress=False)

    third = CountingAnswerer(tiny_answerer)
    answer_question_file(questions, third, output, image_root=tmp_path, batch_size=2, show_progress=False)
    assert third.calls == 0  # all done: nothing recomputed


def test_answer_errors_name_the_problem(tmp_path, tiny_answerer):
    questions = write_questions(tmp_path / "q.jsonl", tmp_path, count=2)
    (tmp_path / "img0.png").unlink()
    with pytest.raises(ImageLoadError, match="img0.png: no such image file"):
        answer_question_file(questions, tiny_answerer, tmp_path / "p.jsonl", image_root=tmp_path, show_progress=False)
    with pytest.raises(ValueError, match="question_id 'q1' appears more than once"):
        answer_question_file(
            questions + [questions[1]], tiny_answerer, tmp_path / "p.jsonl", image_root=tmp_path, show_progress=False
        )
    with pytest.raises(ValueError, match=r"question 1: missing field\(s\) \['text'\]"):
        answer_question_file([{"question_id": "x"}], tiny_answerer, tmp_path / "p.jsonl", show_progress=False)


def test_generation_settings_and_stops():
    assert GenerationSettings(temperature=0.7, top_p=0.9).generate_kwargs() == {
        "max_new_tokens": 256,
        "num_beams": 1,
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    assert GenerationSettings(top_p=0.9).generate_kwargs()["do_sample"] is False
    assert truncate_at_stops("A cat.\n\nQuestion: more", ["\n\n", "Question:"]) == "A cat."
    assert truncate_at_stops("no stop here", ["###"]) == "no stop here"
