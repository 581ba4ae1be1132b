"""Appendix A: filter a CC3M-style caption set by noun-phrase frequency.

`llava filter-captions cc3m.jsonl --output cc3m_filtered.jsonl` reads `{"id", "image", "caption"}`
records and keeps a subset with a more even coverage of concepts:

1. extract the unique noun phrases of every caption;
2. count, for each noun phrase, the captions that contain it (its frequency);
3. skip noun phrases whose frequency is below 3 (rare concept+attribute combinations that other
   captions already cover);
4. walk the remaining noun phrases from the lowest frequency up (ties: alphabetical) and add the
   captions that contain each one to the selection; a noun phrase with more than 100 captions
   contributes a random subset of 100 of them (seeded). Captions already selected stay selected.

The output keeps the input order. A PNG plot compares the noun-phrase frequency distribution before
and after (the paper's Figure 2).

Noun phrases come from spaCy's `noun_chunks` when a spaCy pipeline is installed (`--spacy-model`,
default `en_core_web_sm`). Otherwise a deterministic fallback is used: the lower-cased caption is
split at punctuation and at function words (articles, pronouns, prepositions, conjunctions, common
verbs and adverbs, see `_FUNCTION_WORDS`), and every remaining run of words is one noun phrase
("a red fire hydrant is deep in the snow" -> "red fire hydrant", "deep", "snow"). It keeps
adjective+noun runs together like spaCy does, but without part-of-speech tags it also keeps stray
adjectives and content verbs, so its counts differ from spaCy's; the method and the thresholds are
the same.
"""

from __future__ import annotations

import argparse
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from processing.jsonio import read_records, write_records

_FUNCTION_WORDS = frozenset(
    """
    a an the this that these those there here some any each every all both either neither no not
    i me my mine we us our you your he him his she her it its they them their what which who whom whose
    of in on at by for with about against between into through during before after above below to from
    up down out off over under again further then once near next onto inside outside around across along
    behind beside besides beyond toward towards upon within without via per like as than
    and or but nor so yet if while because until although though whether
    is are was were be been being am do does did doing have has had having can could will would shall
    should may might must get gets got getting
    very too also just only even still quite really almost much many more most few less least other
    such own same s t don now when where why how out
    """.split()
)
_TOKEN = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*|[^\sa-z0-9]")


def fallback_noun_phrases(caption: str) -> list[str]:
    """Runs of words between punctuation and function words (see the module docstring)."""
    phrases, current = [], []
    for token in _TOKEN.findall(caption.lower()):
        if token in _FUNCTION_WORDS or not token[0].isalnum():
            if current:
                phrases.append(" ".join(current))
            current = []
        else:
            current.append(token)
    if current:
        phrases.append(" ".join(current))
    return phrases


def make_noun_phrase_extractor(spacy_model: str | None = "en_core_web_sm") -> tuple[Callable[[list[str]], list[list[str]]], str]:
    """A batch extractor and its name: spaCy's noun chunks when `spacy_model` loads, else the fallback."""
    if spacy_model:
        try:
            import spacy

            nlp = spacy.load(spacy_model, disable=["ner", "lemmatizer"])
        except (ImportError, OSError):
            # spaCy or the pipeline is not installed: this is the documented fallback, not an error.
            pass
        else:

            def spacy_extract(captions: list[str]) -> list[list[str]]:
                return [[chunk.text.lower() for chunk in doc.noun_chunks] for doc in nlp.pipe(captions, batch_size=256)]

            return spacy_extract, f"spacy:{spacy_model}"
    return (lambda captions: [fallback_noun_phrases(c) for c in captions]), "fallback"


@dataclass
class FilterResult:
    """Indices of the selected captions (input order) and the noun-phrase counts before and after."""

    selected: list[int]
    frequency_before: Counter
    frequency_after: Counter


def select_captions(
    phrases_per_caption: list[Iterable[str]], min_frequency: int = 3, max_per_phrase: int = 100, seed: int = 0
) -> FilterResult:
    """The Appendix A selection over precomputed noun phrases (one iterable per caption)."""
    phrase_sets = [set(phrases) for phrases in phrases_per_caption]
    captions_of: dict[str, list[int]] = {}
    for index, phrases in enumerate(phrase_sets):
        for phrase in phrases:
            captions_of.setdefault(phrase, []).append(index)
    frequency = Counter({phrase: len(indices) for phrase, indices in captions_of.items()})

    rng = random.Random(seed)
    selected: set[int] = set()
    kept = sorted((p for p in captions_of if frequency[p] >= min_frequency), key=lambda p: (frequency[p], p))
    for phrase in kept:
        indices = captions_of[phrase]
        if len(indices) > max_per_phrase:
            indices = rng.sample(indices, max_per_phrase)
        selected.update(indices)

    ordered = sorted(selected)
    after = Counter(phrase for index in ordered for phrase in phrase_sets[index])
    return FilterResult(selected=ordered, frequency_before=frequency, frequency_after=after)


def plot_frequencies(result: FilterResult, path: str | Path, title: str = "Noun-phrase frequency") -> None:
    """Figure 2 of the paper: frequency of each unique noun phrase, sorted, before and after filtering."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.5))
    for counter, label in ((result.frequency_before, "before filtering"), (result.frequency_after, "after filtering")):
        counts = sorted(counter.values(), reverse=True)
        axis.plot(range(1, len(counts) + 1), counts, label=f"{label} ({len(counts)} unique noun phrases)")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("unique noun phrases (sorted by frequency)")
    axis.set_ylabel("frequency (captions)")
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def filter_caption_records(
    records: list[dict[str, Any]], min_frequency: int = 3, max_per_phrase: int = 100, seed: int = 0, spacy_model: str | None = "en_core_web_sm"
) -> tuple[list[dict[str, Any]], FilterResult, str]:
    """Filter `{"caption", ...}` records; returns the kept records, the statistics and the extractor name."""
    for index, record in enumerate(records):
        if not isinstance(record.get("caption"), str) or not record["caption"].strip():
            raise ValueError(f"caption record #{index} (id {record.get('id')!r}): missing or empty 'caption'")
    extract, extractor_name = make_noun_phrase_extractor(spacy_model)
    result = select_captions(extract([r["caption"] for r in records]), min_frequency, max_per_phrase, seed)
    return [records[i] for i in result.selected], result, extractor_name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="llava filter-captions",
        description="Appendix A filter: keep captions so that noun phrases are covered evenly (skip phrases "
        "seen in fewer than --min-frequency captions, walk from the rarest, at most --max-per-phrase "
        "captions each) and plot the noun-phrase frequencies before/after (paper Fig. 2).",
    )
    parser.add_argument("captions", help='caption records, JSON list or JSON lines of {"id", "image", "caption"}')
    parser.add_argument("--output", required=True, help="filtered records (.json: a list; else JSON lines)")
    parser.add_argument("--plot", default=None, help="PNG of the frequency distributions (default: OUTPUT stem + _noun_phrases.png)")
    parser.add_argument("--min-frequency", type=int, default=3, help="skip noun phrases in fewer captions than this (default 3)")
    parser.add_argument("--max-per-phrase", type=int, default=100, help="captions drawn at most per noun phrase (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-phrase random subsets")
    parser.add_argument("--spacy-model", default="en_core_web_sm", help="spaCy pipeline for noun chunks if installed; '' forces the fallback")
    args = parser.parse_args(argv)

    records = read_records(args.captions)
    kept, result, extractor = filter_caption_records(records, args.min_frequency, args.max_per_phrase, args.seed, args.spacy_model or None)
    write_records(args.output, kept)
    output = Path(args.output)
    plot_path = Path(args.plot) if args.plot else output.with_name(f"{output.stem}_noun_phrases.png")
    plot_frequencies(result, plot_path)
    print(
        f"noun phrases from {extractor}: {len(result.frequency_before)} unique before, {len(result.frequency_after)} after\n"
        f"kept {len(kept)} of {len(records)} captions -> {args.output}\nplot -> {plot_path}"
    )
    return 0
