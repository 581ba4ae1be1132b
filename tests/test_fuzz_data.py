"""Property-based fuzzing (hypothesis) of the data path: `llava validate`'s checks, the dataset reader, the
collators, training's `on_bad_data: skip` filtering and image decoding, on arbitrary files.

Properties: nothing raises an exception of its own (only the project's `LlavaDataError`/`ImageLoadError`/
`UnusableSampleError` where documented); every bad line is reported, exactly once per line, with its file:line
(and id where readable); every good record is kept; count in = count kept + count skipped; labels at image tokens
and padding are always -100. Seeded (`derandomize=True`); see `fuzz_strategies.py` for the profiles.
"""

from __future__ import annotations

import itertools
import json

import pytest
from fuzz_strategies import (
    bad_records,
    encode_line,
    fuzz_settings,
    good_records,
    image_files,
    json_value,
    junk_lines,
    make_image_root,
)
from hypothesis import given
from hypothesis import strategies as st
from training_fixtures import save_tiny_model, tiny_processor

from processing.images import ImageLoadError, open_image
from processing.llava_data import LlavaDataError, load_llava_dataset, to_trl_dataset
from processing.validate import check_dataset
from training.collators import IGNORE_INDEX, UnusableSampleError, stage2_collator
from training.train import parse_config, prepare_dataset


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An image root with good, broken, looping and escaping files; a counter for fresh file names."""
    base = tmp_path_factory.mktemp("fuzz")
    make_image_root(base / "images", base / "outside.png")
    return {"base": base, "root": base / "images", "names": itertools.count(), "processor": tiny_processor("chatml")}


def test_the_strategies_know_the_fuzzing_tokenizers_special_tokens(world):
    from fuzz_strategies import SPECIAL_TOKENS

    from processing.llava_data import special_tokens_in_text

    assert set(special_tokens_in_text(world["processor"].tokenizer)) == set(SPECIAL_TOKENS)


# A file: a list of lines, each (kind, value): "good" records, "bad" mutated records, "junk".
lines_strategy = st.lists(
    st.one_of(
        good_records().map(lambda r: ("good", r)),
        bad_records().map(lambda pair: ("bad", pair)),
        junk_lines.map(lambda raw: ("junk", raw)),
    ),
    min_size=1,
    max_size=8,
)


def write_file(world, lines) -> tuple:
    """Write the lines as JSONL; returns the path and the line numbers of good and bad records and of junk."""
    path = world["base"] / f"data-{next(world['names'])}.jsonl"
    verdicts = {"good": [], "bad": [], "junk": []}
    payload = []
    for number, (kind, value) in enumerate(lines, start=1):
        record = value[0] if kind == "bad" else value
        payload.append(encode_line(record) if kind != "junk" else value.replace(b"\n", b" ").replace(b"\r", b" "))
        verdicts[kind].append(number)
    path.write_bytes(b"\n".join(payload) + b"\n")
    return path, verdicts


def good_ids(lines) -> list[str]:
    return [str(value["id"]) for kind, value in lines if kind == "good"]


def assert_reported_exactly(report, verdicts, path):
    reported = report.failing_lines
    assert set(verdicts["good"]).isdisjoint(reported), "a good record was reported"
    assert set(verdicts["bad"]) <= reported, "a bad record was not reported"
    for problem in report.problems:
        assert f"{path}:{problem.line}" in str(problem)
    # the report prints and saves as UTF-8 whatever the data held (lone surrogates, NUL bytes, ...)
    report.format().encode("utf-8")
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")


@fuzz_settings(ci_examples=120)
@given(lines=lines_strategy, decode=st.booleans())
def test_validate_reports_every_bad_line_and_no_good_one(world, lines, decode):
    path, verdicts = write_file(world, lines)
    report = check_dataset(path, world["root"], processor=world["processor"], decode_images=decode)
    assert_reported_exactly(report, verdicts, path)
    # the reader agrees: strict mode refuses exactly when something is bad; leaving the bad lines out keeps the rest
    kept = load_llava_dataset(path, world["root"], exclude_lines=report.failing_lines)
    junk_kept = set(verdicts["junk"]) - report.failing_lines
    assert len(kept) == len(verdicts["good"]) + len(junk_kept)
    if not junk_kept:
        assert kept["id"] == good_ids(lines)
    # image files and the tokenizer's markup are the validator's business (the reader opens no image and knows no
    # tokenizer): anything else bad, the reader refuses
    beyond_reader = ("missing_image", "unreadable_image", "special_token_in_text")
    if report.failing_lines - {p.line for p in report.problems if p.kind in beyond_reader}:
        with pytest.raises(LlavaDataError):
            load_llava_dataset(path, world["root"])


@fuzz_settings(ci_examples=40)
@given(lines=lines_strategy)
def test_skip_filtering_keeps_every_good_record_and_counts_add_up(world, lines):
    path, verdicts = write_file(world, lines)
    args, training_args = parse_config({
        "stage": 2, "data_path": str(path), "image_root": str(world["root"]), "output_dir": str(world["base"] / "out"),
        "on_bad_data": "skip", "max_length": 4096, "use_cpu": True, "bf16": False,
    })
    collator = stage2_collator(world["processor"], max_length=4096)
    try:
        dataset, scans, skipped = prepare_dataset(args, training_args, collator)
    except Exception as error:  # only "nothing left to train on", which the project raises itself
        assert type(error).__name__ == "DataCheckError" and "no usable training sample" in str(error)
        assert not verdicts["good"]
        return
    if len(dataset) == len(verdicts["good"]):
        assert dataset["id"] == good_ids(lines)
    assert len(dataset) >= len(verdicts["good"])
    assert len(dataset) + len(skipped) == len(lines)
    assert len({s.line for s in skipped}) == len(skipped), "a line was skipped twice"
    assert set(verdicts["bad"]) <= {s.line for s in skipped}
    json.dumps([vars(s) for s in skipped], ensure_ascii=False).encode("utf-8")


@fuzz_settings(ci_examples=40)
@given(records=st.lists(good_records(), min_size=1, max_size=4), ratio=st.sampled_from([None, 0.0, 0.5, 1.0]))
def test_collator_never_labels_image_tokens_or_padding(world, records, ratio):
    path, _ = write_file(world, [("good", record) for record in records])
    dataset = to_trl_dataset(load_llava_dataset(path, world["root"]), world["root"], image_first_ratio=ratio)
    collator = stage2_collator(world["processor"], max_length=None, on_bad_sample="skip")
    batch = collator([dataset[i] for i in range(len(dataset))])
    image = batch["input_ids"] == world["processor"].image_token_id
    assert (batch["labels"][image] == IGNORE_INDEX).all()
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()
    assert int(image.sum()) == sum(len(row["images"]) for row in dataset.with_format(None)) * world["processor"].image_seq_length
    assert not collator.skipped


@fuzz_settings(ci_examples=80)
@given(messages=st.lists(
    st.fixed_dictionaries({
        "role": st.sampled_from(["user", "assistant", "system"]),
        "content": st.lists(st.one_of(st.just({"type": "image"}), st.builds(lambda t: {"type": "text", "text": t},
                            st.text(max_size=20))), max_size=3),
    }), min_size=1, max_size=4))
def test_collator_on_arbitrary_messages_labels_no_image_token(world, messages):
    """Messages straight to the collator (no data checks): whatever the roles and image blocks, image tokens are never
    labels, and a sample it cannot use is refused with its own error."""
    from processing_fixtures import gradient_image

    n_images = sum(block["type"] == "image" for message in messages for block in message["content"])
    example = {"id": "x", "messages": messages, "images": [gradient_image(30, 30)] * n_images}
    try:
        batch = stage2_collator(world["processor"], max_length=None)([example])
    except UnusableSampleError:
        return
    image = batch["input_ids"] == world["processor"].image_token_id
    assert (batch["labels"][image] == IGNORE_INDEX).all()


@fuzz_settings(ci_examples=150)
@given(data=image_files())
def test_image_decoding_raises_only_image_load_error(world, data):
    path = world["base"] / f"image-{next(world['names'])}"
    path.write_bytes(data)
    try:
        image = open_image(path)
    except ImageLoadError as error:
        assert error.kind == "unreadable_image"
        return
    assert image.mode == "RGB"


@pytest.fixture(scope="module")
def tiny_model(world):
    return save_tiny_model(world["base"] / "base")


@fuzz_settings(ci_examples=3)
@given(lines=st.lists(st.one_of(good_records().map(lambda r: ("good", r)), bad_records().map(lambda p: ("bad", p)),
                                junk_lines.map(lambda raw: ("junk", raw))), min_size=6, max_size=12)
       .filter(lambda lines: sum(kind == "good" for kind, _ in lines) >= 2))
def test_train_skip_end_to_end(world, tiny_model, lines):
    """`llava train --on_bad_data skip` itself (in-process `run`): trains on the good records only, writes one
    skipped_samples.json entry per bad line, and every collated batch passed the label check."""
    from training.train import SKIPPED_FILE, run

    path, verdicts = write_file(world, lines)
    output_dir = world["base"] / f"run-{next(world['names'])}"
    output = run({"stage": 2, "model_name_or_path": str(tiny_model), "data_path": str(path),
                  "image_root": str(world["root"]), "output_dir": str(output_dir), "on_bad_data": "skip",
                  "max_length": 4096, "max_steps": 1, "per_device_train_batch_size": 2, "use_cpu": True, "bf16": False,
                  "report_to": "none", "save_strategy": "no", "logging_steps": 1})
    saved = json.loads((output_dir / SKIPPED_FILE).read_text(encoding="utf-8")) if verdicts["bad"] or verdicts["junk"] else []
    assert set(verdicts["bad"]) <= {entry["line"] for entry in saved}
    assert len(output.losses) == 1


@fuzz_settings(ci_examples=60)
@given(values=st.lists(st.one_of(good_records(), json_value), max_size=6), chunk=st.integers(1, 64),
       indent=st.sampled_from([None, 1, 4]), tail=st.sampled_from(["", "\n", "  \n\n", "\nextra"]))
def test_json_array_read_in_chunks_matches_json_loads(world, values, chunk, indent, tail):
    """The streaming JSON-array reader, with chunks as small as one byte: the same values as `json.loads`, each
    on the line where it starts, and data after the closing bracket reported."""
    from processing import llava_data

    text = json.dumps(values, indent=indent, ensure_ascii=False) + tail
    path = world["base"] / f"array-{next(world['names'])}.json"
    path.write_text(text, encoding="utf-8")
    original = llava_data._ArrayReader.CHUNK
    llava_data._ArrayReader.CHUNK = chunk
    try:
        items = list(llava_data.iter_raw_records(path))
    finally:
        llava_data._ArrayReader.CHUNK = original
    problems = [item for item in items if isinstance(item, llava_data.DataProblem)]
    assert [item.value for item in items if not isinstance(item, llava_data.DataProblem)] == values
    assert len(problems) == (1 if tail.strip() else 0)
    if indent is not None and values:
        lines = text.split("\n")
        for item in items:
            if not isinstance(item, llava_data.DataProblem):
                assert lines[item.line - 1].strip()  # the value's first line, not a blank
