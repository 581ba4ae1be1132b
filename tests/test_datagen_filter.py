"""Appendix A caption filter (datagen/caption_filter.py), with selections computed by hand."""

import json

from datagen_fixtures import run_cli

from datagen.caption_filter import fallback_noun_phrases, select_captions

# Ten captions; their noun phrases (what the fallback extractor finds in CAPTIONS below):
PHRASES = [
    ["dog", "park"],  # 0
    ["dog", "ball"],  # 1
    ["dog"],  # 2
    ["cat", "sofa"],  # 3
    ["cat"],  # 4
    ["cat", "park"],  # 5
    ["bird", "park"],  # 6
    ["bird"],  # 7
    ["something rare"],  # 8
    ["dog", "cat"],  # 9
]
CAPTIONS = [
    "A dog in the park.",
    "A dog with a ball",
    "a dog",
    "A cat on a sofa.",
    "The cat",
    "a cat in the park",
    "A bird over the park",
    "a bird",
    "Something rare",
    "A dog and a cat",
]
# By hand: frequencies dog 4 (0,1,2,9), cat 4 (3,4,5,9), park 3 (0,5,6), bird 2, ball/sofa/rare 1.
# Phrases with frequency >= 3: park, cat, dog (walked in that order: 3, then 4 and 4 alphabetically).
# Selection = park's {0,5,6} | cat's {3,4,5,9} | dog's {0,1,2,9}; captions 7 (bird) and 8 (rare) are left out.
EXPECTED = [0, 1, 2, 3, 4, 5, 6, 9]


def test_fallback_noun_phrases_split_at_function_words_and_punctuation():
    assert [fallback_noun_phrases(c) for c in CAPTIONS] == PHRASES
    assert fallback_noun_phrases("A red fire hydrant is deep in the snow.") == ["red fire hydrant", "deep", "snow"]
    assert fallback_noun_phrases("Two dogs, a cat and the park's bench") == ["two dogs", "cat", "park's bench"]


def test_selection_matches_the_hand_computation():
    result = select_captions(PHRASES, min_frequency=3, max_per_phrase=100, seed=0)
    assert result.selected == EXPECTED
    assert result.frequency_before == {"dog": 4, "cat": 4, "park": 3, "bird": 2, "ball": 1, "sofa": 1, "something rare": 1}
    assert result.frequency_after == {"dog": 4, "cat": 4, "park": 3, "bird": 1, "ball": 1, "sofa": 1}
    # With a threshold of 2, "bird" (captions 6, 7) qualifies too; "rare" never does.
    assert select_captions(PHRASES, min_frequency=2).selected == [0, 1, 2, 3, 4, 5, 6, 7, 9]


def test_cap_per_phrase_draws_a_seeded_subset():
    # One phrase in 5 captions, cap 2: exactly 2 of them, the same 2 for the same seed.
    only = [["kite"]] * 5
    picks = {tuple(select_captions(only, max_per_phrase=2, seed=seed).selected) for seed in range(10)}
    assert all(len(p) == 2 and set(p) <= set(range(5)) for p in picks)
    assert len(picks) > 1
    assert select_captions(only, max_per_phrase=2, seed=3).selected == select_captions(only, max_per_phrase=2, seed=3).selected

    # Cap 3 on the hand example: park (3 captions) is taken whole, cat and dog contribute 3 of 4 each.
    for seed in range(5):
        selected = set(select_captions(PHRASES, max_per_phrase=3, seed=seed).selected)
        assert {0, 5, 6} <= selected <= set(EXPECTED)
        assert len(selected & {3, 4, 5, 9}) >= 3 and len(selected & {0, 1, 2, 9}) >= 3


def test_cli_writes_filtered_captions_and_plot(tmp_path):
    records = [{"id": f"c{i}", "image": f"{i}.jpg", "caption": caption} for i, caption in enumerate(CAPTIONS)]
    source = tmp_path / "captions.json"
    source.write_text(json.dumps(records))
    output = tmp_path / "filtered.jsonl"
    result = run_cli("filter-captions", str(source), "--output", str(output), "--spacy-model", "")
    assert result.returncode == 0, result.stderr
    kept = [json.loads(line) for line in output.read_text().splitlines()]
    assert kept == [records[i] for i in EXPECTED]
    assert "noun phrases from fallback: 7 unique before, 6 after" in result.stdout
    assert "kept 8 of 10 captions" in result.stdout
    plot = tmp_path / "filtered_noun_phrases.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
