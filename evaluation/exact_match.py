"""Exact-match accuracy on questions with one true one-word answer (the offline demo's measure).

The answer is extracted from the generated text as the first word that belongs to the question type's
answer vocabulary (e.g. the first colour word for a colour question), lower-cased, and compared with
the truth. A model that cannot see but names some colour scores at chance; one that names none scores
zero. Questions are answered greedily in left-padded batches through the model's own processor and
chat template (`inference.batch`, as `llava answer` does), exactly as a user would query the model.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from inference.batch import BatchAnswerer, answer_in_batches
from inference.settings import GenerationSettings

_WORD = re.compile(r"[a-z0-9]+")


def extract_answer(text: str, vocabulary: set[str] | None = None) -> str:
    """The first word of `text` in `vocabulary` (any word when no vocabulary is given), or ''."""
    for word in _WORD.findall(text.lower()):
        if vocabulary is None or word in vocabulary:
            return word
    return ""


@dataclass
class Prediction:
    id: str
    type: str
    question: str
    answer: str
    prediction: str
    image: str
    extracted: str = ""

    @property
    def correct(self) -> bool:
        return self.extracted == self.answer.lower()


def predict(item: dict, text: str, vocabularies: dict[str, set[str]] | None = None) -> Prediction:
    """The scored answer `text` to question `item` (`id, image, type, question, answer`)."""
    vocabulary = (vocabularies or {}).get(item["type"])
    return Prediction(item["id"], item["type"], item["question"], item["answer"], text, item["image"],
                      extract_answer(text, vocabulary))


def read_questions(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def answer_questions(
    model,
    processor,
    questions: list[dict],
    image_root: str | Path,
    vocabularies: dict[str, set[str]] | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 8,
    progress=None,
) -> list[Prediction]:
    """Greedy answers for `questions` (`id, image, type, question, answer`), batched and left padded
    (`inference.batch`). `vocabularies` maps a question type to its possible answers, used to extract the
    answer word; `progress(done, total)` is called after each batch."""
    model.eval()
    answerer = BatchAnswerer(model, processor, GenerationSettings(max_new_tokens=max_new_tokens))
    predictions = []
    batches = answer_in_batches(answerer, questions, batch_size, lambda item: item["question"],
                                lambda item: Image.open(Path(image_root) / item["image"]).convert("RGB"))
    for batch, texts in batches:
        predictions += [predict(item, text, vocabularies) for item, text in zip(batch, texts)]
        if progress is not None:
            progress(len(predictions), len(questions))
    return predictions


def accuracy_by_type(predictions: list[Prediction]) -> dict[str, float]:
    """Accuracy per question type plus `overall` (fraction of all questions)."""
    buckets: dict[str, list[bool]] = defaultdict(list)
    for prediction in predictions:
        buckets[prediction.type].append(prediction.correct)
    scores = {kind: sum(values) / len(values) for kind, values in sorted(buckets.items())}
    scores["overall"] = sum(p.correct for p in predictions) / max(len(predictions), 1)
    return scores


def counts_by_type(predictions: list[Prediction]) -> dict[str, tuple[int, int]]:
    """(correct, questions) per question type plus `overall`: what an accuracy's confidence interval needs
    (`evaluation.intervals`)."""
    buckets: dict[str, list[bool]] = defaultdict(list)
    for prediction in predictions:
        buckets[prediction.type].append(prediction.correct)
    counts = {kind: (sum(values), len(values)) for kind, values in sorted(buckets.items())}
    counts["overall"] = (sum(p.correct for p in predictions), len(predictions))
    return counts
