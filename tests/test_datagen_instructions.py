"""Tables 8/9 and the naive stage-1 expansion (datagen/instructions.py)."""

import json

from datagen_fixtures import run_cli

from datagen.instructions import brief_instructions, detail_instructions, expand_caption_pairs


def test_instruction_tables_have_the_papers_entries():
    brief, detail = brief_instructions(), detail_instructions()
    assert len(brief) == 11 and len(set(brief)) == 11
    assert len(detail) == 16 and len(set(detail)) == 16
    assert brief[0] == "Describe the image concisely."
    assert brief[-1] == "Create a compact narrative representing the image presented."
    assert detail[0] == "Describe the following image in detail"
    assert detail[-1] == "Write an exhaustive depiction of the given image"


def test_expansion_is_one_turn_with_image_before_or_after_a_table8_instruction():
    pairs = [{"id": f"p{i}", "image": f"{i}.jpg", "caption": f"caption {i} "} for i in range(40)]
    samples = expand_caption_pairs(pairs, seed=3)
    before = after = 0
    for pair, sample in zip(pairs, samples):
        assert sample["id"] == pair["id"] and sample["image"] == pair["image"]
        human, gpt = sample["conversations"]
        assert human["from"] == "human" and gpt == {"from": "gpt", "value": pair["caption"].strip()}
        if human["value"].startswith("<image>\n"):
            question, before = human["value"][len("<image>\n"):], before + 1
        else:
            assert human["value"].endswith("\n<image>")
            question, after = human["value"][: -len("\n<image>")], after + 1
        assert question in brief_instructions()
    assert before > 5 and after > 5  # both placements occur
    assert expand_caption_pairs(pairs, seed=3) == samples
    assert expand_caption_pairs(pairs, seed=4) != samples


def test_cli_expands_jsonl_to_llava_json(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": str(i), "image": f"{i}.jpg", "caption": "a cat"}) + "\n" for i in range(3)))
    output = tmp_path / "stage1.json"
    result = run_cli("expand-captions", str(pairs), "--output", str(output), "--seed", "1")
    assert result.returncode == 0, result.stderr
    data = json.loads(output.read_text())
    assert [s["id"] for s in data] == ["0", "1", "2"]
    assert all("<image>" in s["conversations"][0]["value"] for s in data)

    pairs.write_text(json.dumps({"id": "x", "image": "x.jpg"}) + "\n")
    result = run_cli("expand-captions", str(pairs), "--output", str(output))
    assert result.returncode != 0 and "caption pair #0 (id 'x'): missing or empty caption" in result.stderr
