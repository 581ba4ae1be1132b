"""`llava serve`'s chat handler on bad requests, called directly (fast; the browser test covers the page): a huge
question is refused before anything tokenizes it, a question beyond the model's context is refused with the
numbers, an upload that is not an image is reported in the chat, and the server answers the next question."""

from __future__ import annotations

import pytest
import torch
from gradio.data_classes import ImageData
from PIL import Image

from conftest import tiny_llava_config
from inference import web_demo
from inference.settings import GenerationSettings
from modeling_llava import LlavaForCausalLM
from training_fixtures import tiny_processor


@pytest.fixture(scope="module")
def chat():
    torch.manual_seed(0)
    model = LlavaForCausalLM(tiny_llava_config()).eval()
    processor = tiny_processor()
    options = GenerationSettings(max_new_tokens=8)
    limits = web_demo.QuestionLimits.for_model(model, processor)
    return model, processor, options, limits


def last_turn(chat, image, question, history=()):
    *_, (history, box) = web_demo.respond(*chat, image, question, list(history))
    return history, box


@pytest.fixture
def no_generation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was asked to generate")

    monkeypatch.setattr("inference.streaming.stream_answer", refuse)


def test_a_20_mb_question_is_refused_before_tokenizing(chat, no_generation, monkeypatch):
    model, processor, options, limits = chat
    monkeypatch.setattr(type(processor.tokenizer), "__call__", lambda *a, **k: pytest.fail("tokenized"))
    question = "why? " * (4 * 1024 * 1024) + "why?"  # 20 MiB
    history, box = last_turn(chat, None, question)
    reply = history[-1]["content"]
    assert reply.startswith(web_demo.REFUSED) and "20,971,524 characters" in reply
    assert f"{limits.context_tokens:,} tokens" in reply and box == ""
    assert len(history[-2]["content"]) < 300  # the question is not echoed whole


def test_a_question_beyond_the_context_is_refused_with_the_numbers(chat, no_generation):
    model, processor, options, limits = chat
    question = "x" * (limits.context_tokens + 100)  # one token per character with the tiny tokenizer
    assert len(question) <= limits.max_question_chars
    history, box = last_turn(chat, Image.new("RGB", (30, 30)), question)
    reply = history[-1]["content"]
    assert reply.startswith(web_demo.REFUSED) and "more than this model's context of 512 tokens" in reply
    assert box == question  # kept in the box to shorten


def test_an_upload_that_is_not_an_image_is_reported_in_the_chat(tmp_path, chat, no_generation):
    notes = tmp_path / "notes.txt"
    notes.write_text("not pixels")
    component = web_demo._image_input(type="pil")
    upload = component.preprocess(ImageData(path=str(notes), orig_name="notes.txt"))
    assert isinstance(upload, web_demo.NotAnImage)
    history, _ = last_turn(chat, upload, "What is in the picture?")
    assert history[-1]["content"].startswith("not an image: notes.txt (")
    real = component.preprocess(ImageData(path=str(_png(tmp_path)), orig_name="a.png"))
    assert isinstance(real, Image.Image)


def _png(tmp_path):
    Image.new("RGB", (30, 30), "red").save(tmp_path / "a.png")
    return tmp_path / "a.png"


def test_after_refusals_the_next_question_is_answered_without_them(chat):
    model, processor, options, limits = chat
    history, _ = last_turn(chat, web_demo.NotAnImage("x.bin", "cannot identify image file"), "hello?")
    history, _ = last_turn(chat, None, "y" * (limits.context_tokens + 1), history)
    messages = web_demo._to_model_messages(history + [{"role": "user", "content": "What colour?"}], has_image=True)
    assert [m["role"] for m in messages] == ["user"] and messages[0]["content"][0] == {"type": "image"}
    history, _ = last_turn(chat, Image.new("RGB", (30, 30)), "What colour?", history)
    assert history[-1]["role"] == "assistant" and not history[-1]["content"].startswith(web_demo.REFUSED)


def test_a_conversation_near_the_context_gets_a_shorter_answer_and_is_told(chat):
    model, processor, options, limits = chat
    options = GenerationSettings(max_new_tokens=200)
    question = "z" * (limits.context_tokens - 100)
    history, _ = last_turn((model, processor, options, limits), None, question)
    assert "(Answer limited to" in history[-1]["content"]


def test_history_as_gradio_hands_it_back_gives_the_model_plain_text():
    # Gradio 6's Chatbot preprocess: every message's content is a list of typed blocks.
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hello?"}], "metadata": None},
        {"role": "assistant", "content": [{"type": "text", "text": "not an image: x.bin (bad)"}], "metadata": None},
        {"role": "user", "content": [{"type": "text", "text": "What colour?"}], "metadata": None},
        {"role": "assistant", "content": [{"type": "text", "text": "Red."}], "metadata": None},
        {"role": "user", "content": "And the shape?"},
    ]
    messages = web_demo._to_model_messages(history, has_image=False)
    assert [m["content"][0]["text"] for m in messages] == ["What colour?", "Red.", "And the shape?"]
