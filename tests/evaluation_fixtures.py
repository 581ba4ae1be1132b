"""Fixtures for the evaluation tests: a tiny ScienceQA folder in the dataset's exact layout, and a
scripted stand-in for a judge/teacher (for unit tests of the scoring logic only; the end-to-end
judge tests go through the real Teacher and the loopback chat server)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


def _problem(question, choices, answer, hint, image, subject, grade, lecture="", solution=""):
    return {
        "question": question,
        "choices": choices,
        "answer": answer,
        "hint": hint,
        "image": image,
        "task": "closed choice",
        "grade": grade,
        "subject": subject,
        "topic": "fixture",
        "category": "fixture",
        "skill": "fixture",
        "lecture": lecture,
        "solution": solution,
        "split": "test",
    }


# Six test problems chosen so that every Table 6 category is exercised (see test_evaluation_scoring).
SCIENCEQA_TEST_PROBLEMS: dict[str, dict[str, Any]] = {
    # NAT, IMG, G1-6
    "p1": _problem(
        "Which animal is shown?",
        ["cat", "dog"],
        0,
        "",
        "image.png",
        "natural science",
        "grade2",
        lecture="Animals have features.",
        solution="The picture shows a cat.",
    ),
    # SOC, TXT, G7-12
    "p2": _problem(
        "Which city is the capital?",
        ["Paris", "Rome", "Oslo"],
        1,
        "The map shows Italy.",
        None,
        "social science",
        "grade8",
        lecture="Capitals are cities.",
        solution="Rome is Italy's capital.",
    ),
    # LAN, NO, G1-6
    "p3": _problem(
        "Which word rhymes with cat?",
        ["dog", "sun", "hat", "pen"],
        2,
        "",
        None,
        "language science",
        "grade5",
        lecture="",
        solution="Hat rhymes with cat.",
    ),
    # NAT, TXT, IMG, G7-12
    "p4": _problem(
        "Which force moves the ball?",
        ["push", "pull"],
        0,
        "A boy kicks a ball.",
        "image.png",
        "natural science",
        "grade10",
        lecture="Forces push or pull.",
        solution="A kick is a push.",
    ),
    # SOC, IMG, G1-6
    "p5": _problem("Which state is highlighted?", ["Ohio", "Utah"], 1, "", "image.png", "social science", "grade3"),
    # NAT, NO, G7-12
    "p6": _problem(
        "Which is a metal?",
        ["wood", "glass", "clay", "iron", "wool"],
        3,
        "",
        None,
        "natural science",
        "grade12",
        lecture="Metals conduct.",
        solution="Iron is a metal.",
    ),
}

SCIENCEQA_TRAIN_PROBLEMS: dict[str, dict[str, Any]] = {
    "t1": {
        **_problem(
            "Which is hot?",
            ["ice", "fire"],
            1,
            "",
            "image.png",
            "natural science",
            "grade1",
            lecture="Heat.",
            solution="Fire is hot.",
        ),
        "split": "train",
    },
}


def write_scienceqa(root: Path) -> Path:
    """Write `problems.json`, `pid_splits.json` and `images/<split>/<pid>/image.png` under `root`."""
    problems = {**SCIENCEQA_TEST_PROBLEMS, **SCIENCEQA_TRAIN_PROBLEMS}
    root.mkdir(parents=True, exist_ok=True)
    (root / "problems.json").write_text(json.dumps(problems, indent=1))
    splits = {"train": list(SCIENCEQA_TRAIN_PROBLEMS), "val": [], "test": list(SCIENCEQA_TEST_PROBLEMS)}
    (root / "pid_splits.json").write_text(json.dumps(splits))
    for pid, problem in problems.items():
        if problem["image"]:
            folder = root / "images" / problem["split"] / pid
            folder.mkdir(parents=True, exist_ok=True)
            colour = (40 * len(pid), 200, 10 * int(pid[1:]))
            Image.new("RGB", (40, 30), colour).save(folder / problem["image"])
    return root


@dataclass
class ScriptedReply:
    text: str
    finish_reason: str = "stop"
    usage: dict = field(default_factory=dict)


class ScriptedJudge:
    """Answers each call with the next scripted text chosen by a function of the messages."""

    def __init__(self, respond):
        self.respond = respond
        self.calls: list[list[dict[str, Any]]] = []

    def complete(self, messages):
        self.calls.append(messages)
        return ScriptedReply(self.respond(messages, len(self.calls)))


# ---------------------------------------------------------------- a tiny image-text model on disk
_WORDS = (
    "what is in the image which animal city word force state metal a an cat dog yes no there "
    "context options answer A B C D E . , ? : is shown capital rhymes moves highlighted N/A ### Human: Assistant:"
).split()


def tiny_tokenizer():
    """A word-level tokenizer built offline (no Hub) for the tiny test model of `conftest`: pad 0,
    bos 1, eos 2, a small vocabulary, unused slots, and `<image>` as the last id (TINY_IMAGE_TOKEN_ID)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from conftest import TINY_IMAGE_TOKEN_ID, TINY_VOCAB

    tokens = list(dict.fromkeys(["<pad>", "<s>", "</s>", "<unk>", *_WORDS]))
    tokens += [f"<unused{i}>" for i in range(TINY_VOCAB - 1 - len(tokens))] + ["<image>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    assert vocab["<image>"] == TINY_IMAGE_TOKEN_ID
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


def tiny_model_and_processor(seed: int = 0):
    """The project's tiny random `LlavaForCausalLM` (conftest: CLIP 30x30 / patch 6, 2-layer Llama)
    with a matching `LlavaProcessor` using the paper's chat template."""
    from transformers import CLIPImageProcessor

    from conftest import tiny_llava_model
    from processing import LlavaProcessor
    from processing.templates import get_chat_template

    model = tiny_llava_model(seed=seed)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tiny_tokenizer(),
        chat_template=get_chat_template("paper"),
        image_seq_length=model.config.image_seq_length,
    )
    return model, processor


def save_tiny_image_text_model(folder: Path, seed: int = 0) -> Path:
    """Save the tiny model + processor as a folder that loads through `AutoModelForImageTextToText`
    and `AutoProcessor` with `trust_remote_code=True`."""
    model, processor = tiny_model_and_processor(seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_questions(path: Path, image_root: Path, count: int = 5) -> list[dict[str, Any]]:
    """A question JSONL mixing image and text-only questions; images written under `image_root`."""
    questions = []
    for index in range(count):
        question: dict[str, Any] = {
            "question_id": f"q{index}",
            "text": "what is in the image ?" if index % 2 == 0 else "which animal is shown ?",
        }
        if index % 2 == 0:
            name = f"img{index}.png"
            Image.new("RGB", (32, 32), (50 * index % 255, 120, 200)).save(image_root / name)
            question["image"] = name
            question["text"] = "<image>\n" + question["text"]
        questions.append(question)
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    return questions
