"""LLaVA-format datasets: reading JSON/JSONL, TRL conversion and back, eq. (2), and every bad input we know of."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from PIL import Image
from processing_fixtures import gradient_image, sample, write_jsonl, write_png_header_only

from processing.images import ImageLoadError, LazyImageLoader, load_image
from processing.llava_data import (
    LlavaDataError,
    content_to_text,
    llava_to_messages,
    load_llava_dataset,
    messages_to_llava,
    text_to_content,
    to_trl_dataset,
)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    gradient_image(40, 30, seed=1).save(root / "a.png")
    gradient_image(20, 20, seed=2).save(root / "sub" / "b.jpg")
    return root


RECORDS = [
    sample("one", "a.png"),
    sample("two", ["a.png", "sub/b.jpg"], [("human", "Compare <image> and\n<image>"), ("gpt", "Same size? No.")]),
    {**sample("text", None, [("system", "Be brief."), ("human", "Hi"), ("gpt", "Hello."), ("human", "Bye"), ("gpt", "Bye.")]), "source": "chat"},
    sample("after", "sub/b.jpg", [("human", "What is it?\n<image>"), ("gpt", "Noise.")]),
]


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_reads_json_and_jsonl_including_text_only(tmp_path, image_root, fmt):
    path = tmp_path / f"data.{fmt}"
    if fmt == "json":
        path.write_text(json.dumps(RECORDS, indent=2), encoding="utf-8")
    else:
        write_jsonl(path, RECORDS)
    dataset = load_llava_dataset(path, image_root)
    assert dataset["id"] == ["one", "two", "text", "after"]
    assert dataset["images"] == [["a.png"], ["a.png", "sub/b.jpg"], [], ["sub/b.jpg"]]
    assert json.loads(dataset[2]["extra"]) == {"source": "chat"}


def test_trl_conversion_round_trip_and_lazy_images(tmp_path, image_root):
    dataset = load_llava_dataset(write_jsonl(tmp_path / "d.jsonl", RECORDS), image_root)
    trl = to_trl_dataset(dataset)  # no image_root: paths stay paths
    first = trl[0]
    assert first["images"] == ["a.png"]
    assert first["messages"][0] == {
        "role": "user",
        "content": [{"type": "image", "text": None}, {"type": "text", "text": "What is this?"}],
    }
    assert [messages_to_llava(example) for example in trl] == RECORDS

    loaded = to_trl_dataset(dataset, image_root=image_root)
    row = loaded[1]
    assert [image.size for image in row["images"]] == [(40, 30), (20, 20)]
    assert all(image.mode == "RGB" for image in row["images"])
    assert loaded[2]["images"] == [] and loaded[2]["messages"][0]["role"] == "system"
    assert np.array_equal(np.asarray(row["images"][0]), np.asarray(gradient_image(40, 30, seed=1)))


def test_text_to_content_keeps_placement_and_round_trips():
    image, text = {"type": "image", "text": None}, {"type": "text", "text": "Q"}
    assert text_to_content("<image>\nQ") == [image, text]
    assert text_to_content("Q\n<image>") == [text, image]
    assert text_to_content("no image") == [{"type": "text", "text": "no image"}]
    for value in ("<image>\nQ", "Q\n<image>", "Compare <image> and\n<image>", "<image>\n\nQ", "A\n\n<image>\nB", "<image>\n<image>\nQ"):
        assert content_to_text(text_to_content(value)) == value


def test_templates_render_typed_content_like_the_llava_string():
    from processing_fixtures import smollm2_tokenizer

    from processing.templates import get_chat_template

    tokenizer = smollm2_tokenizer()
    template = get_chat_template("paper")
    for value in ("<image>\nQ", "Compare <image> and\n<image>", "A\n\n<image>\nB"):
        as_string = [{"role": "user", "content": value}]
        as_blocks = [{"role": "user", "content": text_to_content(value)}]
        assert tokenizer.apply_chat_template(as_string, chat_template=template, tokenize=False) == tokenizer.apply_chat_template(
            as_blocks, chat_template=template, tokenize=False
        )


def test_eq2_both_orders_occur_reproducibly(tmp_path, image_root):
    records = [sample(f"s{i}", "a.png") for i in range(60)]
    records[0]["conversations"].extend([{"from": "human", "value": "More?"}, {"from": "gpt", "value": "No."}])
    dataset = load_llava_dataset(write_jsonl(tmp_path / "d.jsonl", records), image_root)

    def order(seed, ratio=0.5):
        converted = to_trl_dataset(dataset, image_first_ratio=ratio, seed=seed)
        return [example["messages"][0]["content"][0]["type"] == "image" for example in converted]

    first = order(seed=1)
    assert 10 < sum(first) < 50  # both orders, in roughly the requested proportion
    assert order(seed=1) == first
    assert order(seed=2) != first
    assert all(order(seed=1, ratio=1.0)) and not any(order(seed=1, ratio=0.0))
    # Later turns are never touched, and the question text survives in both orders.
    converted = to_trl_dataset(dataset, image_first_ratio=0.0, seed=1)[0]["messages"]
    assert converted[0]["content"] == [{"type": "text", "text": "What is this?"}, {"type": "image", "text": None}]
    assert converted[2]["content"] == [{"type": "text", "text": "More?"}]
    with pytest.raises(ValueError, match="image_first_ratio"):
        to_trl_dataset(dataset, image_first_ratio=1.5)


def test_path_escaping_the_image_root_is_refused(tmp_path, image_root):
    (tmp_path / "secret.png").write_bytes(b"not for you")
    for bad in ("../secret.png", "sub/../../secret.png", str(tmp_path / "secret.png")):
        with pytest.raises(ImageLoadError, match="outside the image root|absolute"):
            load_image(image_root, bad)
        path = write_jsonl(tmp_path / "d.jsonl", [sample("ok", "a.png"), sample("evil", bad)])
        with pytest.raises(LlavaDataError, match=r"d\.jsonl:2 \(sample 'evil'\)"):
            load_llava_dataset(path, image_root)


def test_truncated_and_corrupt_images_are_reported(image_root):
    data = (image_root / "sub" / "b.jpg").read_bytes()
    (image_root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (image_root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    (image_root / "text.jpg").write_text("hello")
    for name in ("truncated.jpg", "corrupt.png", "text.jpg"):
        with pytest.raises(ImageLoadError, match=name) as error:
            load_image(image_root, name)
        assert error.value.kind == "unreadable_image"
    with pytest.raises(ImageLoadError, match="no such image file"):
        load_image(image_root, "missing.png")


def test_every_pixel_format_loads_as_rgb(image_root):
    Image.new("L", (8, 8), 200).save(image_root / "gray.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(image_root / "transparent.png")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(image_root / "cmyk.jpg")
    Image.new("P", (8, 8), 3).save(image_root / "palette.gif")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(image_root / "white16.png")
    Image.fromarray(np.full((8, 8), 32896, dtype=np.uint16)).save(image_root / "mid16.png")
    assert Image.open(image_root / "white16.png").mode.startswith("I")
    expected = {
        "gray.png": (200, 200, 200),
        "transparent.png": (255, 255, 255),  # fully transparent: composited on white, not black
        "white16.png": (255, 255, 255),
        "mid16.png": (128, 128, 128),  # Pillow's plain convert() would clip this to 255
    }
    for name in ("gray.png", "transparent.png", "cmyk.jpg", "palette.gif", "white16.png", "mid16.png"):
        image = load_image(image_root, name)
        assert image.mode == "RGB" and image.size == (8, 8)
        if name in expected:
            assert image.getpixel((4, 4)) == expected[name], name
    red = load_image(image_root, "cmyk.jpg").getpixel((4, 4))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_decompression_bomb_is_refused_with_a_clear_error(image_root):
    write_png_header_only(image_root / "bomb.png", 30_000, 30_000)  # 900 Mpx declared in a ~100-byte file
    write_png_header_only(image_root / "large.png", 10_000, 10_000)  # 100 Mpx: above the limit, below Pillow's own
    assert (image_root / "bomb.png").stat().st_size < 200
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may slip through as a mere warning
        for name in ("bomb.png", "large.png"):
            with pytest.raises(ImageLoadError, match="decompression bomb"):
                load_image(image_root, name)
    gradient_image(20, 20).save(image_root / "small.png")
    with pytest.raises(ImageLoadError, match="400 pixels, more than the limit of 100"):
        load_image(image_root, "small.png", max_pixels=100)


def test_malformed_json_lines_are_reported_with_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(sample("a", "x.png")) + "\n" + '{"id": "b", "conversations": [\n' + json.dumps(sample("c", "x.png")) + "\n")
    with pytest.raises(LlavaDataError, match=r"bad\.jsonl:2 \(sample 'b'\): malformed JSON"):
        load_llava_dataset(path)
    array = tmp_path / "bad.json"
    array.write_text("[\n  " + json.dumps(sample("a", "x.png")) + ',\n  {"id": "b",, }\n]')
    with pytest.raises(LlavaDataError, match=r"bad\.json:3 \(sample 'b'\): malformed JSON"):
        load_llava_dataset(array)


def test_non_utf8_text_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(sample("a", "x.png")).encode()
    bad = json.dumps(sample("b", None, [("human", "caf\u00e9?"), ("gpt", "Yes.")]), ensure_ascii=False).encode("latin-1")
    path.write_bytes(good + b"\n" + good + b"\n" + bad + b"\n")
    with pytest.raises(LlavaDataError, match=r"latin1\.jsonl:3 \(sample 'b'\): not valid UTF-8"):
        load_llava_dataset(path)
    array = tmp_path / "latin1.json"
    array.write_bytes(b"[\n" + good + b",\n" + bad + b"\n]")
    with pytest.raises(LlavaDataError, match=r"latin1\.json:3: not valid UTF-8"):
        load_llava_dataset(array)


def test_conversation_starting_with_the_assistant_is_reported(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [sample("fine", None, [("human", "Hi"), ("gpt", "Hello.")]), sample("backwards", None, [("gpt", "Hello."), ("human", "Hi")])],
    )
    with pytest.raises(LlavaDataError, match=r"d\.jsonl:2 \(sample 'backwards'\): the conversation starts with 'gpt'"):
        load_llava_dataset(path)
    assert load_llava_dataset(path, exclude_ids={"backwards"})["id"] == ["fine"]


def test_lazy_loader_pickles_for_dataloader_workers(image_root):
    import pickle

    loader = pickle.loads(pickle.dumps(LazyImageLoader(image_root)))
    assert loader({"images": [["a.png"]], "id": ["x"]})["images"][0][0].size == (40, 30)


def test_llava_to_messages_roles():
    messages = llava_to_messages([{"from": "system", "value": "S"}, {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}])
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]


def test_trl_rows_feed_trls_vision_collator(tmp_path, image_root):
    """Rows of `to_trl_dataset` (lazily loaded images, typed content) go straight into TRL's collator."""
    from processing_fixtures import make_processor
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    dataset = load_llava_dataset(write_jsonl(tmp_path / "d.jsonl", RECORDS), image_root)
    rows = to_trl_dataset(dataset, image_root=image_root, image_first_ratio=0.5, seed=0)
    processor = make_processor(template="paper", image_seq_length=3)
    collator = DataCollatorForVisionLanguageModeling(processor, assistant_only_loss=True)
    batch = collator([rows[i] for i in range(len(rows))])
    assert batch["pixel_values"].shape == (4, 3, 30, 30)  # 1 + 2 + 0 + 1 images
    assert (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist() == [3, 6, 0, 3]
    supervised = [processor.tokenizer.decode(ids[labels != -100]) for ids, labels in zip(batch["input_ids"], batch["labels"])]
    assert supervised == [" A test pattern.###", " Same size? No.###", " Hello.### Bye.###", " Noise.###"]
