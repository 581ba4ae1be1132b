"""POPE-style yes/no metrics for object-hallucination question sets (Li et al. 2023).

Each question asks whether an object is in the image ("Is there a dog in the image?") and has a
label `yes` or `no`; a model that hallucinates says "yes" too often, which the yes-ratio shows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_WORDS = re.compile(r"[a-z']+")


def parse_yes_no(text: str) -> str:
    """Read a free-form answer as `"yes"` or `"no"`.

    As in LLaVA's POPE evaluation: only the first sentence counts, and it is "no" when it contains
    the word "no" or "not" (also "n't"), otherwise "yes".
    """
    first_sentence = text.strip().split(".")[0].lower()
    words = _WORDS.findall(first_sentence)
    if any(word in ("no", "not") or word.endswith("n't") for word in words):
        return "no"
    return "yes"


def pope_metrics(labels: Sequence[str], predictions: Sequence[str]) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (with "yes" as the positive class) and the yes-ratio of the
    predictions, plus the confusion counts. Precision/recall/F1 with an empty denominator are 0.

    Raises:
        ValueError: on different lengths, an empty set, or a label/prediction other than yes/no.
    """
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if not labels:
        raise ValueError("no POPE questions to score")
    for name, values in (("label", labels), ("prediction", predictions)):
        bad = sorted({value for value in values if value not in ("yes", "no")})
        if bad:
            raise ValueError(f"{name}s must be 'yes' or 'no'; found {bad}")
    pairs = list(zip(labels, predictions))
    tp = sum(label == "yes" and pred == "yes" for label, pred in pairs)
    fp = sum(label == "no" and pred == "yes" for label, pred in pairs)
    tn = sum(label == "no" and pred == "no" for label, pred in pairs)
    fn = sum(label == "yes" and pred == "no" for label, pred in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / len(pairs),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "count": len(pairs),
    }
