"""Mixing the three response types (datagen/mix.py)."""

import json
from collections import Counter

import pytest
from datagen_fixtures import run_cli

from datagen.mix import mix_samples, parse_proportions


def samples(conversation, detail, complex_):
    counts = {"conversation": conversation, "detail": detail, "complex": complex_}
    return [{"id": f"{t}{i}", "type": t, "conversations": []} for t, n in counts.items() for i in range(n)]


def test_paper_proportions_give_the_largest_mix_available():
    pool = samples(60, 23, 100)
    mixed = mix_samples(pool, parse_proportions("conversation=58,detail=23,complex=77"), seed=0)
    # detail limits: 23 / (23/158) = 158 samples -> 58 / 23 / 77
    assert Counter(s["type"] for s in mixed) == {"conversation": 58, "detail": 23, "complex": 77}
    assert len({s["id"] for s in mixed}) == 158
    assert mix_samples(pool, parse_proportions("conversation=58,detail=23,complex=77"), seed=0) == mixed
    assert mix_samples(pool, parse_proportions("conversation=58,detail=23,complex=77"), seed=1) != mixed


def test_total_and_errors():
    pool = samples(10, 10, 10)
    mixed = mix_samples(pool, {"conversation": 1, "detail": 1, "complex": 0}, total=8)
    assert Counter(s["type"] for s in mixed) == {"conversation": 4, "detail": 4}
    with pytest.raises(ValueError, match="detail: need 15, have 10"):
        mix_samples(pool, {"conversation": 1, "detail": 1}, total=30)
    with pytest.raises(ValueError, match="bad proportion 'chat=1'"):
        parse_proportions("chat=1")


def test_cli(tmp_path):
    source = tmp_path / "gen.jsonl"
    source.write_text("".join(json.dumps(s) + "\n" for s in samples(4, 4, 4)))
    result = run_cli("mix-data", str(source), "--output", str(tmp_path / "mix.json"), "--proportions", "conversation=1,detail=1,complex=2", "--total", "8")
    assert result.returncode == 0, result.stderr
    assert Counter(s["type"] for s in json.loads((tmp_path / "mix.json").read_text())) == {"conversation": 2, "detail": 2, "complex": 4}
