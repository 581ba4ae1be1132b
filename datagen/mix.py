"""`llava mix-data`: build the stage-2 training mix from generated samples of the three types.

The paper's LLaVA-Instruct-158K mixes 58K conversation, 23K detailed description and 77K complex
reasoning samples. Give the proportions (any positive numbers, normalised) and optionally a total;
without a total the largest mix the available samples allow is drawn. Sampling and the final
shuffle use one seeded generator.
"""

from __future__ import annotations

import argparse
import math
import random
from typing import Any

from datagen.prompting import RESPONSE_TYPES
from processing.jsonio import read_records, write_records

PAPER_PROPORTIONS: dict[str, float] = {"conversation": 58, "detail": 23, "complex": 77}


def parse_proportions(text: str) -> dict[str, float]:
    """`"conversation=58,detail=23,complex=77"` -> dict; types must be known, weights >= 0."""
    proportions = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in RESPONSE_TYPES or not value:
            raise ValueError(f"bad proportion {part!r}: expected TYPE=WEIGHT with TYPE among {', '.join(RESPONSE_TYPES)}")
        proportions[name] = float(value)
        if proportions[name] < 0:
            raise ValueError(f"bad proportion {part!r}: weights must be >= 0")
    if sum(proportions.values()) <= 0:
        raise ValueError(f"proportions {text!r} sum to zero")
    return proportions


def mix_samples(
    samples: list[dict[str, Any]], proportions: dict[str, float], total: int | None = None, seed: int = 0
) -> list[dict[str, Any]]:
    """Draw `round(total * share)` samples of each type (by the `type` field) and shuffle them together."""
    by_type: dict[str, list[dict[str, Any]]] = {t: [] for t in RESPONSE_TYPES}
    for index, sample in enumerate(samples):
        if sample.get("type") not in by_type:
            raise ValueError(f"sample #{index} (id {sample.get('id')!r}): 'type' is {sample.get('type')!r}, expected one of {', '.join(RESPONSE_TYPES)}")
        by_type[sample["type"]].append(sample)
    weight_sum = sum(proportions.values())
    shares = {t: w / weight_sum for t, w in proportions.items() if w > 0}
    if total is None:
        total = min(math.floor(len(by_type[t]) / share + 1e-9) for t, share in shares.items())
    counts = {t: round(total * share) for t, share in shares.items()}
    short = {t: (n, len(by_type[t])) for t, n in counts.items() if n > len(by_type[t])}
    if short:
        details = ", ".join(f"{t}: need {n}, have {have}" for t, (n, have) in short.items())
        raise ValueError(f"not enough samples for a mix of {total}: {details}")
    rng = random.Random(seed)
    mixed = [sample for t, n in counts.items() for sample in rng.sample(by_type[t], n)]
    rng.shuffle(mixed)
    return mixed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llava mix-data",
        description="Mix generated conversation/detail/complex samples into one training file with given "
        "proportions (default: the paper's 58K/23K/77K) and seed.",
    )
    parser.add_argument("inputs", nargs="+", help="JSONL files written by `llava generate-data` (or JSON lists)")
    parser.add_argument("--output", required=True, help="mixed LLaVA data (.json: a list; else JSON lines)")
    parser.add_argument("--proportions", default="conversation=58,detail=23,complex=77", help="TYPE=WEIGHT,... (weights are normalised)")
    parser.add_argument("--total", type=int, default=None, help="number of samples (default: as many as the proportions allow)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling and the shuffle")
    args = parser.parse_args(argv)

    samples = [sample for path in args.inputs for sample in read_records(path)]
    mixed = mix_samples(samples, parse_proportions(args.proportions), args.total, args.seed)
    write_records(args.output, mixed)
    counts = {t: sum(s["type"] == t for s in mixed) for t in RESPONSE_TYPES}
    print(f"wrote {len(mixed)} samples ({', '.join(f'{t}: {n}' for t, n in counts.items())}) to {args.output}")
    return 0
