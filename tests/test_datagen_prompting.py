"""Prompt assembly (Table 10), context formatting and reply parsing (datagen/prompting.py)."""

import random

import pytest

from datagen.prompting import (
    RESPONSE_TYPES,
    ImageContext,
    ParseError,
    build_messages,
    format_context,
    load_prompt,
    parse_qa_pairs,
    parse_reply,
    to_llava_sample,
)
from datagen.instructions import detail_instructions

CONTEXT = ImageContext.from_record(
    {
        "id": "42",
        "image": "42.jpg",
        "captions": ["A group of people standing outside of a black vehicle with various luggage.", "People try to fit all of their luggage in an SUV."],
        "boxes": [{"name": "person", "bbox": [0.681, 0.242, 0.774, 0.694]}, {"name": "suitcase", "bbox": [0.1, 0.497, 0.173, 0.579]}],
    }
)


def test_context_is_captions_then_boxes():
    assert format_context(CONTEXT) == (
        "A group of people standing outside of a black vehicle with various luggage.\n"
        "People try to fit all of their luggage in an SUV.\n"
        "\n"
        "person: [0.681, 0.242, 0.774, 0.694]\n"
        "suitcase: [0.1, 0.497, 0.173, 0.579]"
    )


@pytest.mark.parametrize("response_type", RESPONSE_TYPES)
def test_messages_follow_table_10(response_type):
    template = load_prompt(response_type)
    assert template.system and len(template.examples) >= 1
    messages = build_messages(response_type, "QUERY CONTEXT")
    assert messages[0] == {"role": "system", "content": template.system}
    middle = messages[1:-1]
    assert len(middle) == 2 * len(template.examples)
    for (context, response), user, assistant in zip(template.examples, middle[0::2], middle[1::2]):
        assert user == {"role": "user", "content": context}
        assert assistant == {"role": "assistant", "content": response}
    assert messages[-1] == {"role": "user", "content": "QUERY CONTEXT"}


def test_conversation_prompt_is_the_papers():
    template = load_prompt("conversation")
    assert template.system.startswith("You are an AI visual assistant, and you are seeing a single image.")
    assert "(2) one can determine confidently from the image that it is not in the image." in template.system
    assert [c.splitlines()[0] for c, _ in template.examples] == [
        "There is a movie theater that displays the show times above the doors.",
        "A man is skiing in the open snow covered hills",
    ]
    # every few-shot response must itself parse: the teacher imitates them
    for response_type in RESPONSE_TYPES:
        for _, response in load_prompt(response_type).examples:
            turns = parse_reply(response_type, response, random.Random(0))
            assert len(turns) >= 1


def test_parse_qa_pairs_accepts_the_paper_format_and_variants():
    text = "Question:\nWhat color?\n===\nAnswer:\nRed.\n===\nQuestion:\nHow many?\n===\nAnswer:\nTwo.\n\nReally two."
    assert parse_qa_pairs(text) == [("What color?", "Red."), ("How many?", "Two.\n\nReally two.")]
    variant = "Sure, here it is.\n**Question:** What color?\n**Answer:** Red.\nquestion: Why?\nanswer: Because."
    assert parse_qa_pairs(variant) == [("What color?", "Red."), ("Why?", "Because.")]


@pytest.mark.parametrize(
    "text, reason",
    [
        ("The image shows a dog.", "no 'Question:'/'Answer:' markers"),
        ("Question: A?\n===\nQuestion: B?\n===\nAnswer: b", "expected 'answer'"),
        ("Question: A?\n===\nAnswer: a\n===\nQuestion: B?", "the last question has no answer"),
        ("Question: A?\n===\nAnswer:\n===\n", "empty answer"),
    ],
)
def test_parse_qa_pairs_rejects_with_a_reason(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse_qa_pairs(text)


def test_parse_reply_per_type():
    rng = random.Random(0)
    detail = parse_reply("detail", "  A dog on grass.  ", rng)
    assert len(detail) == 1 and detail[0][0] in detail_instructions() and detail[0][1] == "A dog on grass."
    assert parse_reply("complex", "Question: Why?\n===\nAnswer: Because.", rng) == [("Why?", "Because.")]
    with pytest.raises(ParseError, match="expected one question/answer pair, found 2"):
        parse_reply("complex", "Question: A?\nAnswer: a\nQuestion: B?\nAnswer: b", rng)
    with pytest.raises(ParseError, match="empty reply"):
        parse_reply("detail", " \n", rng)


def test_llava_sample_puts_image_in_first_turn_only():
    turns = [("Q1?", "A1."), ("Q2?", "A2.")]
    placements = set()
    for seed in range(20):
        sample = to_llava_sample(CONTEXT, "conversation", turns, random.Random(seed))
        assert sample["id"] == "42_conversation" and sample["image"] == "42.jpg"
        assert (sample["image_id"], sample["type"]) == ("42", "conversation")
        first, a1, second, a2 = sample["conversations"]
        assert first["value"] in ("<image>\nQ1?", "Q1?\n<image>")
        placements.add(first["value"])
        assert (a1, second, a2) == ({"from": "gpt", "value": "A1."}, {"from": "human", "value": "Q2?"}, {"from": "gpt", "value": "A2."})
    assert len(placements) == 2


def test_context_validation_names_the_problem():
    with pytest.raises(ValueError, match="missing key 'captions'"):
        ImageContext.from_record({"id": "1", "image": "1.jpg"}, "ctx.jsonl, record 1")
    with pytest.raises(ValueError, match="not normalised to 0-1"):
        ImageContext.from_record({"id": "1", "image": "1.jpg", "captions": ["a"], "boxes": [{"name": "x", "bbox": [0, 0, 20, 30]}]})


def test_load_contexts_names_the_bad_record(tmp_path):
    from datagen.prompting import load_contexts

    path = tmp_path / "contexts.jsonl"
    good = '{"id": "a", "image": "a.jpg", "captions": ["x"]}\n'
    path.write_text(good + '{"id": "b", "image": "b.jpg", "captions": []}\n')
    with pytest.raises(ValueError, match=r"contexts.jsonl, record 2 \(id 'b'\): 'captions' must be a non-empty list"):
        load_contexts(path)
    path.write_text(good + good)
    with pytest.raises(ValueError, match="image id 'a' appears more than once"):
        load_contexts(path)
