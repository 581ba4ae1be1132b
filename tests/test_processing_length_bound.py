"""`processing.length_bound`: the bound never undercuts the exact length, so `llava validate`'s report with the
bound is the exact path's, sample for sample (property-based, see `fuzz_strategies.py` for the profiles)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fuzz_strategies import ODD, bad_records, encode_line, free_text, fuzz_settings, good_records
from processing_fixtures import make_processor, sample, write_jsonl

from processing.length_bound import LengthBound, fixed_piece_template, tokenizer_bound_problem
from processing.llava_data import conversation_problems, llava_to_messages
from processing.validate import SampleMeasure, check_dataset


TEMPLATES = ("vicuna_v1", "chatml", "paper", "llama2", "plain", "own")
# Large, so that a bound that undercounts images by one fails by far more than the slack of the fixed text.
IMAGE_SEQ_LENGTH = 1000


@pytest.fixture(scope="module")
def processors():
    return {name: make_processor(template=name, image_seq_length=IMAGE_SEQ_LENGTH) for name in TEMPLATES}


@pytest.fixture(scope="module")
def measures(processors):
    return {name: SampleMeasure.from_processor(processor, supervision=False) for name, processor in processors.items()}


# Text that tokenizes to nearly one token per byte (odd Unicode, lone bytes of the placeholder and the templates'
# special tokens, digits, whitespace runs) as well as ordinary words.
near_placeholder = st.sampled_from(["<", ">", "<imag", "image>", "mage>", "e>", "<i", "<|im_", "|>", "</", "s>", "###", "[/INST]"])
words = st.lists(st.sampled_from("the a picture of red bus street 42 3.14 don't".split()), max_size=30).map(" ".join)
# CJK Extension B: 4 bytes a character and no merges in SmolLM2's vocabulary, so exactly one token per byte (the
# bound's worst case: only the fixed text of the template leaves it any slack).
one_token_per_byte = st.text(st.characters(min_codepoint=0x20000, max_codepoint=0x2A6DF), min_size=1, max_size=80)
piece = st.one_of(free_text, near_placeholder, words, st.text(max_size=20), st.sampled_from(ODD), one_token_per_byte)
turn_text = st.lists(piece, min_size=1, max_size=5).map("".join).map(lambda t: t.replace("<image>", "<img>")).filter(str.strip)


@st.composite
def conversations(draw):
    """Well-formed LLaVA turns (optional system turn, 1-3 rounds) with 0-3 placeholders at the start, the end or in
    the middle of human turns."""
    turns = [{"from": "system", "value": draw(turn_text)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        question = draw(turn_text)
        for _ in range(draw(st.integers(0, 2))):
            where = draw(st.sampled_from(["start", "end", "middle"]))
            question = {"start": f"<image>\n{question}", "end": f"{question}\n<image>",
                        "middle": f"{question[: len(question) // 2]}<image>{question[len(question) // 2:]}"}[where]
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": draw(turn_text)}]
    return turns


def exact_length(measure, turns) -> int:
    """The length as transformers measures it: Jinja renders, the tokenizer tokenizes (no `ShapeRenderer`)."""
    ids = measure.tokenizer.apply_chat_template(llava_to_messages(turns), chat_template=measure.chat_template, tokenize=True)
    ids = ids["input_ids"] if not isinstance(ids, list) else ids
    return len(ids) + ids.count(measure.image_token_id) * (measure.image_seq_length - 1)


@fuzz_settings(ci_examples=150)
@given(turns=st.one_of(conversations(), good_records().map(lambda record: record["conversations"])),
       template=st.sampled_from(TEMPLATES))
def test_shape_rendering_is_jinjas_rendering(measures, turns, template):
    measure = measures[template]
    assert measure.renderer is not None, "the project's templates are fixed-piece templates"
    messages = llava_to_messages(turns)
    jinja = measure.tokenizer.apply_chat_template(messages, chat_template=measure.chat_template, tokenize=False)
    rendered = measure.renderer(messages)
    assert rendered is None or rendered == jinja
    # `plain` (stage 1) drops the human turn's text: those samples go through Jinja
    if template != "plain" and all(block.get("text", "x") for message in messages for block in message["content"]):
        assert rendered is not None, "a conversation without empty texts is rendered without Jinja"
    assert measure([messages])[0].length == exact_length(measure, turns)


@fuzz_settings(ci_examples=150)
@given(turns=conversations(), template=st.sampled_from(TEMPLATES))
def test_the_bound_is_never_below_the_exact_length(measures, turns, template):
    measure = measures[template]
    bound = LengthBound.for_measure(measure)
    assert bound is not None, "the project's templates with SmolLM2's byte-level BPE have a bound"
    found = bound(turns)
    exact = exact_length(measure, turns)
    assert found is None or found >= exact
    # each step of the argument on its own (module docstring): tokens <= bytes, image ids <= `<image>` substrings
    rendered = measure.tokenizer.apply_chat_template(llava_to_messages(turns), chat_template=measure.chat_template, tokenize=False)
    ids = measure.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert len(ids) <= len(rendered.encode("utf-8"))
    assert ids.count(measure.image_token_id) <= rendered.count("<image>")
    if found is not None:  # the rendered text's bytes are within the bound's byte part
        images = rendered.count("<image>")
        assert len(rendered.encode("utf-8")) + images * (IMAGE_SEQ_LENGTH - 1) <= found


def as_record(turns: list[dict]) -> dict:
    placeholders = sum(turn["value"].count("<image>") for turn in turns)
    return {"id": "x", "image": [f"{index}.png" for index in range(placeholders)], "conversations": turns}


good = st.one_of(conversations().map(as_record), good_records())
lines = st.lists(st.one_of(good, good, bad_records().map(lambda pair: pair[0])), min_size=1, max_size=6)


@fuzz_settings(ci_examples=40)
@given(records=lines, template=st.sampled_from(TEMPLATES), pick=st.integers(0, 5), offset=st.integers(-2, 2))
def test_validate_reports_the_same_with_and_without_the_bound(processors, measures, tmp_path_factory, records, template, pick, offset):
    good = [record for record in records if not conversation_problems(record)]
    # a limit right at one good sample's exact length (a bound that undercuts it changes the report)
    max_length = max(1, (exact_length(measures[template], good[pick % len(good)]["conversations"]) if good else 500) + offset)
    path = tmp_path_factory.mktemp("bound") / "data.jsonl"
    path.write_bytes(b"\n".join(encode_line(record) for record in records) + b"\n")
    exact = check_dataset(path, None, processors[template], max_length=max_length, length_bound=False)
    bounded = check_dataset(path, None, processors[template], max_length=max_length)
    assert bounded.problems == exact.problems


def test_samples_above_the_bound_are_measured_and_the_rest_are_not(tmp_path, monkeypatch):
    processor = make_processor(template="vicuna_v1", image_seq_length=100)
    short = sample("short", "a.png", [("human", "<image>\nWhat is it?"), ("gpt", "A bus.")])
    long = sample("long", "a.png", [("human", "<image>\nWhat is it?"), ("gpt", "A red bus. " * 60)])
    odd = sample("odd", None, [("human", "Is 1 < 2?"), ("gpt", "Yes.")])  # a "<" in the text: measured
    path = write_jsonl(tmp_path / "data.jsonl", [short, long, odd])
    measure = SampleMeasure.from_processor(processor, supervision=False)
    limit = exact_length(measure, long["conversations"]) - 1
    assert LengthBound.for_measure(measure)(short["conversations"]) <= limit
    measured = []
    original = SampleMeasure.__call__
    monkeypatch.setattr(SampleMeasure, "__call__", lambda self, batch: measured.extend(batch) or original(self, batch))
    report = check_dataset(path, None, processor, max_length=limit)
    assert [(p.kind, p.sample_id) for p in report.problems] == [("too_long", "long")]
    assert measured == [llava_to_messages(long["conversations"]), llava_to_messages(odd["conversations"])]


def test_no_bound_where_it_is_not_provable():
    from tokenizers import normalizers

    processor = make_processor(template="vicuna_v1")
    assert tokenizer_bound_problem(processor.tokenizer) is None
    edited = processor.chat_template.replace("USER: ", "USER: {{ messages | length }} ")
    assert fixed_piece_template(processor.chat_template) and not fixed_piece_template(edited)
    assert LengthBound.for_measure(SampleMeasure(processor.tokenizer, edited, processor.image_token_id, 5, supervision=False)) is None
    # counting supervised tokens (training's scan) needs the exact path
    assert LengthBound.for_measure(SampleMeasure.from_processor(processor)) is None
    processor.tokenizer.backend_tokenizer.normalizer = normalizers.NFKC()  # "ﬃ" is 3 bytes, NFKC makes it "ffi"
    assert "normalizer" in tokenizer_bound_problem(processor.tokenizer)
    assert LengthBound.for_measure(SampleMeasure.from_processor(processor, supervision=False)) is None


def test_a_derived_own_template_is_recognised_with_any_pieces():
    from processing.templates.own import TemplateParts, build_template

    parts = dict(lead_without_system='<s>"quoted" \\ {{ x }}\n', system_prefix=None, lead_after_system=None, user_prefix="U: ",
                 user_suffix="\n", assistant_prefix="A: ", assistant_stop="</s>", assistant_after="", generation_prompt="A:")
    assert fixed_piece_template(build_template(TemplateParts(**parts)))
    assert fixed_piece_template(build_template(TemplateParts(**{**parts, "system_prefix": "S: ", "lead_after_system": "\n"})))
    assert not fixed_piece_template(build_template(TemplateParts(**parts)).replace("render_content(message['content'])",
                                                                                  "render_content(message['content']) * 2"))
    json.dumps(parts)  # the pieces are plain strings
