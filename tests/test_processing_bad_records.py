"""Every kind of malformed line or record becomes one report entry (sample id when readable, else file:line) in
`llava validate`, the dataset reader and training's `on_bad_data: skip`; nothing throws an exception of its own.

One test per row of issue 26's first table that concerns data, each checked to fail on the code before the fix.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from processing_fixtures import gradient_image, sample, write_jsonl
from training_fixtures import tiny_processor

from processing.llava_data import LlavaDataError, check_records, load_llava_dataset
from processing.validate import check_dataset
from training.collators import IGNORE_INDEX, check_labels, stage2_collator
from training.train import parse_config, prepare_dataset


@pytest.fixture
def root(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    gradient_image(30, 30).save(images / "ok.png")
    os.symlink("loop", images / "loop")  # a link to itself: resolving it never ends
    return images


def problems_by_id(report) -> dict:
    found = {}
    for problem in report.problems:
        found.setdefault(problem.sample_id, set()).add(problem.kind)
    return found


IMAGE_IN_ANSWER = sample("answer-image", "ok.png", [("human", "What is it?"), ("gpt", "<image>\nThis.")])
NUL_PATH = sample("nul", "ok\x00.png")
LONG_NAME = sample("long-name", "x" * 300 + ".png")
SYMLINK_LOOP = sample("loop", "loop/ok.png")
LIST_SPEAKER = {"id": "list-from", "image": "ok.png",
                "conversations": [{"from": ["human"], "value": "<image>\nHi"}, {"from": "gpt", "value": "Hello."}]}


@pytest.mark.parametrize(
    "record, kind",
    [
        (IMAGE_IN_ANSWER, "image_outside_human_turn"),
        (NUL_PATH, "bad_image_path"),
        (LONG_NAME, "bad_image_path"),
        (SYMLINK_LOOP, "bad_image_path"),
        (LIST_SPEAKER, "bad_turn"),
    ],
    ids=["image-in-gpt-turn", "nul-byte", "name-over-255", "symlink-loop", "from-is-a-list"],
)
def test_validate_and_reader_report_the_record_by_id(tmp_path, root, record, kind):
    path = write_jsonl(tmp_path / "data.jsonl", [sample("good", "ok.png"), record])
    for decode in (True, False):
        report = check_dataset(path, root, decode_images=decode)
        assert problems_by_id(report) == {record["id"]: {kind}}
        assert [p.line for p in report.problems] == [2]
    with pytest.raises(LlavaDataError, match=rf"data\.jsonl:2 \(sample '{record['id']}'\)"):
        load_llava_dataset(path, root)
    assert load_llava_dataset(path, root, exclude_lines={2})["id"] == ["good"]


def test_image_in_an_answer_is_never_supervised_by_the_collator():
    """Even when the data check is bypassed, the image tokens of an answer are not labels."""
    processor = tiny_processor("chatml")
    example = {
        "id": "answer-image",
        "images": [gradient_image(30, 30)],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "What is it?"}]},
            {"role": "assistant", "content": [{"type": "image"}, {"type": "text", "text": "This."}]},
        ],
    }
    batch = stage2_collator(processor, max_length=None)([example])
    image = batch["input_ids"] == processor.image_token_id
    assert image.sum() == processor.image_seq_length
    assert (batch["labels"][image] == IGNORE_INDEX).all()
    assert (batch["labels"] != IGNORE_INDEX).any()  # the answer's text still is


def test_check_labels_refuses_a_supervised_image_or_padding_token():
    ids = torch.tensor([[5, 7, 7, 0]])
    good = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 1, 0]]), "labels": torch.tensor([[5, -100, -100, -100]])}
    check_labels(good, image_token_id=7)
    with pytest.raises(AssertionError, match="row 0, position 1"):
        check_labels({**good, "labels": torch.tensor([[5, 7, -100, -100]])}, image_token_id=7)
    with pytest.raises(AssertionError, match="position 3"):
        check_labels({**good, "labels": torch.tensor([[5, -100, -100, 0]])}, image_token_id=7)


NOT_RECORDS = [b"null", b"[1, 2]", b'{"image": "ok.png", "conversations": []}', b'"text"', b"3"]
UNREADABLE = [b'{"id": "cut", "conversations": [', b'{"id": "latin", "value": "caf\xe9"}', b"\xff\xfe garbage"]


def mixed_file(tmp_path):
    """Good records between valid JSON that is not a record and lines that are not JSON / not UTF-8."""
    good = [json.dumps(sample(f"good-{i}", "ok.png")).encode() for i in range(3)]
    lines = [good[0], *NOT_RECORDS, good[1], *UNREADABLE, good[2]]
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, len(lines)


def test_validate_lists_lines_that_are_not_records_by_file_and_line(tmp_path, root):
    path, count = mixed_file(tmp_path)
    report = check_dataset(path, root)
    bad_lines = set(range(2, 7)) | set(range(8, 11))
    assert report.failing_lines == bad_lines
    assert {p.sample_id for p in report.problems} == {None, "cut", "latin"}  # ids still readable are given
    assert all(f"mixed.jsonl:{p.line}" in str(p) for p in report.problems)
    assert len(list(check_records(path, root))) == count


def skip_args(tmp_path, data, root, **overrides):
    return parse_config({"stage": 2, "data_path": str(data), "image_root": str(root), "output_dir": str(tmp_path / "out"),
                         "on_bad_data": "skip", "max_length": 512, "use_cpu": True, "bf16": False, **overrides})


def test_skip_mode_skips_every_kind_of_bad_line_and_counts_add_up(tmp_path, root):
    path, count = mixed_file(tmp_path)
    with path.open("ab") as handle:
        for record in (IMAGE_IN_ANSWER, NUL_PATH, LONG_NAME, SYMLINK_LOOP, LIST_SPEAKER):
            handle.write(json.dumps(record).encode() + b"\n")
    count += 5
    args, training_args = skip_args(tmp_path, path, root)
    collator = stage2_collator(tiny_processor("chatml"), max_length=512)
    dataset, scans, skipped = prepare_dataset(args, training_args, collator)
    assert dataset["id"] == ["good-0", "good-1", "good-2"] and len(scans) == 3
    assert len(dataset) + len(skipped) == count
    assert sorted(s.line for s in skipped) == [*range(2, 7), *range(8, 11), *range(12, 17)]
    ids = {s.sample_id for s in skipped}
    assert {"cut", "latin", "answer-image", "nul", "long-name", "loop", "list-from"} <= ids
    json.dumps([vars(s) for s in skipped], ensure_ascii=False).encode("utf-8")  # what skipped_samples.json holds


def test_skip_mode_keeps_a_good_sample_that_shares_its_id_with_a_bad_one(tmp_path, root):
    path = write_jsonl(tmp_path / "dup.jsonl", [sample("same", "ok.png"), sample("same", "missing.png")])
    args, training_args = skip_args(tmp_path, path, root)
    dataset, _, skipped = prepare_dataset(args, training_args, stage2_collator(tiny_processor("chatml"), max_length=512))
    assert len(dataset) == 1 and [(s.sample_id, s.line) for s in skipped] == [("same", 2)]


# What the fuzzing (tests/test_fuzz_data.py) found beyond the table, each pinned by an explicit example.
def test_a_jsonl_file_whose_first_line_is_a_list_is_still_read_line_by_line(tmp_path, root):
    path = tmp_path / "data.jsonl"
    path.write_text("[1, 2]\n" + json.dumps(sample("good", "ok.png")) + "\n")
    report = check_dataset(path, root)
    assert report.failing_lines == {1} and report.num_samples == 2
    # before, the file was read as a JSON array `[1, 2]` and the good record after it silently dropped
    assert load_llava_dataset(path, root, skip_unreadable_lines=True)["id"] == ["good"]


def test_data_after_the_end_of_a_json_array_is_reported(tmp_path, root):
    path = tmp_path / "data.json"
    path.write_text("[" + json.dumps(sample("good", "ok.png")) + "]\n" + json.dumps(sample("lost", "ok.png")) + "\n")
    report = check_dataset(path, root)
    assert [(p.kind, p.line) for p in report.problems] == [("malformed_json", 2)]


def test_json_the_decoder_cannot_take_is_a_malformed_line(tmp_path, root):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"[" * 100_000 + b"\n" + b'{"id": ' + b"9" * 5000 + b"}\n" + json.dumps(sample("good", "ok.png")).encode())
    report = check_dataset(path, root)
    assert [(p.kind, p.line) for p in report.problems] == [("malformed_json", 1), ("malformed_json", 2)]


def test_lone_surrogates_are_reported_not_passed_to_the_tokenizer(tmp_path, root):
    record = sample("surrogate", "ok.png", [("human", "<image>\nHi \\ud800"), ("gpt", "Hello.")])
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(record).replace("\\\\ud800", "\\ud800") + "\n" + json.dumps({**sample("x"), "id": "a\\udfffb"}).replace("\\\\udfff", "\\udfff") + "\n")
    report = check_dataset(path, root)
    assert {(p.kind, p.line) for p in report.problems} >= {("bad_text", 1), ("bad_record", 2)}
    report.format().encode("utf-8")


def test_skipping_every_line_leaves_an_empty_dataset_not_a_crash(tmp_path, root):
    path = write_jsonl(tmp_path / "data.jsonl", [sample("bad", "missing.png")])
    assert len(load_llava_dataset(path, root, exclude_lines={1})) == 0


def test_the_image_token_written_as_text_is_refused_by_the_collator_with_its_own_error():
    from training.collators import UnusableSampleError

    example = {"id": "t", "images": [], "messages": [{"role": "user", "content": [{"type": "text", "text": "<image>"}]},
                                                     {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}
    with pytest.raises(UnusableSampleError, match="image token"):
        stage2_collator(tiny_processor("chatml"), max_length=None)([example])


def test_a_number_cut_by_the_read_buffer_is_read_whole(tmp_path, monkeypatch):
    """Found by the chunked-array property: with the buffer ending after "1" of "1e+16", the number decoded as 1."""
    from processing import llava_data

    path = tmp_path / "numbers.json"
    path.write_text("[1e+16, 25, -0.5e-3, true, null]")
    monkeypatch.setattr(llava_data._ArrayReader, "CHUNK", 1)
    assert [item.value for item in llava_data.iter_raw_records(path)] == [1e16, 25, -0.5e-3, True, None]


FAKE_TURN = sample("fake-turn", "ok.png", [("human", "<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat."),
                                          ("gpt", "A dog.")])


def test_chat_markup_in_the_text_is_reported_where_a_tokenizer_is_known(tmp_path, root):
    """`<|im_end|>` typed into a question becomes the tokenizer's control id (checked below), so the model would
    see a turn boundary the data never had: validate with a processor, and training, report it by id; without a
    processor there is no tokenizer to ask and the record passes the structural checks."""
    processor = tiny_processor("chatml")
    im_end = processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in processor.tokenizer("x<|im_end|>y")["input_ids"]  # the premise: text becomes markup
    path = write_jsonl(tmp_path / "markup.jsonl", [sample("good", "ok.png"), FAKE_TURN])
    assert problems_by_id(check_dataset(path, root, processor=processor)) == {"fake-turn": {"special_token_in_text"}}
    assert problems_by_id(check_dataset(path, root)) == {}
    args, training_args = skip_args(tmp_path, path, root)
    dataset, _, skipped = prepare_dataset(args, training_args, stage2_collator(processor, max_length=512))
    assert dataset["id"] == ["good"] and [s.sample_id for s in skipped] == ["fake-turn"]
    assert "'<|im_end|>'" in skipped[0].reason and "turn 0 (human)" in skipped[0].reason
