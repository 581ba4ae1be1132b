"""Hypothesis strategies for LLaVA data: arbitrary records with known verdicts, junk lines, image bytes.

A *good* record is built valid by construction; a *bad* one is a good record with one mutation that is known to make
it unusable (wrong type at some field, odd paths, tag counts, turn order, ...). The properties in
`test_fuzz_data.py` then know exactly which lines must be reported and which must be kept, without a second
implementation of the checks. Junk lines (random JSON values, random bytes) are bad too except by extreme chance.

Profiles: `ci` (the default; seeded with `derandomize=True`, bounded for CI's 2 cores) and `deep` (many more
examples, random seeds): `HYPOTHESIS_PROFILE=deep python -m pytest tests/test_fuzz_data.py`.
"""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "ci", derandomize=True, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "deep", deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")


DEEP_FACTOR = int(os.environ.get("HYPOTHESIS_DEEP_FACTOR", "20"))


def fuzz_settings(ci_examples: int) -> settings:
    """The active profile with `ci_examples` examples under `ci`, `HYPOTHESIS_DEEP_FACTOR` (20) times as many, from
    fresh random seeds, under `deep`."""
    examples = ci_examples if PROFILE == "ci" else ci_examples * DEEP_FACTOR
    return settings(settings.get_profile(PROFILE), max_examples=examples)


# Files in the fuzzing image root (see `make_image_root`): which paths a good record may use, which are bad.
GOOD_IMAGES = ["ok.png", "sub/ok.png", "sub/../ok.png", "./ok.png", "odd name é.png"]
BAD_IMAGES = [
    "missing.png", "../outside.png", "/etc/passwd", "ok\x00.png", "x" * 256 + ".png", "a/" * 2100 + "ok.png",
    "loop/ok.png", "link-out.png", "broken.png", "sub", "", "\ud800.png", "..", "sub/../../ok.png",
]


def make_image_root(root, outside) -> None:
    """Write the image root the strategies refer to: good images, a broken one, a symlink loop and a link out."""
    from processing_fixtures import gradient_image

    (root / "sub").mkdir(parents=True)
    gradient_image(30, 30).save(root / "ok.png")
    gradient_image(30, 30, seed=1).save(root / "sub" / "ok.png")
    gradient_image(30, 30, seed=2).save(root / "odd name é.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    os.symlink("loop", root / "loop")
    gradient_image(30, 30).save(outside)
    os.symlink(outside, root / "link-out.png")


# Text: any valid Unicode (no lone surrogates), with the characters that break naive code over-represented.
ODD = ["<image>", "<image>\n", "\n<image>", "<|im_end|>", "<s>", "</s>", "\x00", "\u2028", "\u202e", "\ufeff", "é", "🙂",
       "\r\n", " ", "\t", '"', "\\", "{", "}"]
valid_char = st.characters(blacklist_categories=("Cs",))
piece = st.one_of(st.text(valid_char, max_size=12), st.sampled_from(ODD))
free_text = st.lists(piece, max_size=6).map("".join)
# The special tokens of the fuzzing processor's tokenizer (`training_fixtures.tiny_processor`; test_fuzz_data.py
# checks the list): chat markup, which data text must not contain once a tokenizer is known.
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<pad>", "<unk>", "</s>", "<s>")


def _without_markup(text: str) -> str:
    text = text.replace("<image>", "<img>")
    for token in SPECIAL_TOKENS:  # each replacement removes a "<", so it cannot complete another token
        text = text.replace(token, token.replace("<", "‹"))
    return text


# Text of a turn that must stay valid: non-blank, free of the <image> placeholder and of chat markup.
plain_text = free_text.map(_without_markup).filter(lambda text: text.strip())

json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | free_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(free_text, children, max_size=3),
    max_leaves=6,
)


@st.composite
def good_records(draw, sample_id=None):
    """A record every check must accept: valid id, existing images, <image> placeholders in human turns only."""
    n_images = draw(st.integers(0, 2))
    images = draw(st.lists(st.sampled_from(GOOD_IMAGES), min_size=n_images, max_size=n_images))
    n_rounds = draw(st.integers(1, 3))
    turns = []
    if draw(st.booleans()) and draw(st.booleans()):
        turns.append({"from": "system", "value": draw(plain_text)})
    # each image goes into a human turn, at the start or the end, like LLaVA data
    owners = draw(st.lists(st.integers(0, n_rounds - 1), min_size=n_images, max_size=n_images))
    for round_ in range(n_rounds):
        question = draw(plain_text)
        for _ in range(owners.count(round_)):
            question = f"<image>\n{question}" if draw(st.booleans()) else f"{question}\n<image>"
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": draw(plain_text)}]
    record = {"id": sample_id if sample_id is not None else draw(st.one_of(plain_text, st.integers(0, 10**6))),
              "conversations": turns}
    if images:
        record["image"] = images[0] if len(images) == 1 and draw(st.booleans()) else images
    for key in draw(st.lists(st.sampled_from(["source", "meta", "score"]), max_size=2, unique=True)):
        record[key] = draw(json_value)
    return record


def _set(path, value):
    def mutate(record):
        target = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return record
    return mutate


def _with_one_image(record: dict, image: str) -> dict:
    """`record` with `image` as its only image and one <image> placeholder, at the start of the first human turn."""
    turns = [{**turn, "value": turn["value"].replace("<image>", "")} for turn in record["conversations"]]
    first_human = next(i for i, turn in enumerate(turns) if turn["from"] == "human")
    turns[first_human] = {"from": "human", "value": "<image>\n" + turns[first_human]["value"]}
    return {**record, "image": image, "conversations": turns}


@st.composite
def bad_records(draw):
    """A good record with one mutation that makes it unusable; returns `(record_or_raw_line, mutation_name)`.

    A raw line (bytes) stands for mutations below the JSON level (a cut line, a non-UTF-8 byte)."""
    record = draw(good_records())
    turns = record["conversations"]
    first_human = next(i for i, turn in enumerate(turns) if turn["from"] == "human")
    last_gpt = len(turns) - 1
    wrong_type = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.lists(json_value, max_size=2),
                           st.dictionaries(free_text, json_value, max_size=2))
    mutations = {
        "id-missing": lambda r: {k: v for k, v in r.items() if k != "id"},
        "id-wrong-type": _set(["id"], draw(wrong_type)),
        "id-surrogate": _set(["id"], "bad\ud800id"),
        "image-wrong-type": _set(["image"], draw(st.one_of(st.integers(), st.lists(st.integers(), min_size=1),
                                                           st.dictionaries(free_text, json_value, min_size=1)))),
        "image-bad-path": lambda r: _with_one_image(r, draw(st.sampled_from(BAD_IMAGES))),
        "conversations-missing": lambda r: {k: v for k, v in r.items() if k != "conversations"},
        "conversations-wrong-type": _set(["conversations"], draw(st.one_of(st.just([]), wrong_type, free_text))),
        "turn-not-object": _set(["conversations", first_human], draw(st.one_of(free_text, st.lists(free_text), st.none()))),
        "from-wrong-type": _set(["conversations", first_human, "from"], draw(st.one_of(st.just(["human"]), wrong_type))),
        "from-unknown": _set(["conversations", first_human, "from"], draw(free_text.filter(lambda t: t not in ("human", "gpt", "system")))),
        "value-wrong-type": _set(["conversations", last_gpt, "value"], draw(wrong_type)),
        "value-blank": _set(["conversations", last_gpt, "value"], draw(st.sampled_from(["", " ", "\n\t", "\u3000"]))),
        "value-surrogate": _set(["conversations", last_gpt, "value"], "x\udfffy"),
        "starts-with-gpt": lambda r: {**r, "conversations": [t for t in r["conversations"] if t["from"] != "system"][1:]},
        "ends-with-human": lambda r: {**r, "conversations": r["conversations"][:-1]},
        "two-humans": lambda r: {**r, "conversations": r["conversations"][: first_human + 1] + r["conversations"][first_human:]},
        "system-later": lambda r: {**r, "conversations": r["conversations"] + [{"from": "system", "value": "x"}]},
        "image-in-gpt-turn": lambda r: {**r, "image": "ok.png", "conversations": [
            {**t, "value": t["value"].replace("<image>", "")} for t in r["conversations"][:-1]]
            + [{"from": "gpt", "value": "<image>\n" + r["conversations"][-1]["value"]}]},
        "special-token-in-text": _set(["conversations", last_gpt, "value"],
                                      turns[last_gpt]["value"] + draw(st.sampled_from(SPECIAL_TOKENS))),
        "extra-placeholder": _set(["conversations", first_human, "value"], "<image>" + turns[first_human]["value"]),
        "not-an-object": lambda r: draw(st.one_of(st.none(), st.integers(), free_text, st.lists(json_value, max_size=3))),
        "cut-line": lambda r: json.dumps(r).encode()[: draw(st.integers(1, max(1, len(json.dumps(r)) - 1)))],
        "not-utf8": lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8").replace(b"{", b"{\xff", 1),
    }
    name = draw(st.sampled_from(sorted(mutations)))
    return mutations[name](json.loads(json.dumps(record))), name


def encode_line(value) -> bytes:
    """A record (or raw line) as one JSONL line; lone surrogates are written as JSON escapes, as a JSON writer would."""
    if isinstance(value, bytes):
        return value.replace(b"\n", b" ").replace(b"\r", b" ")
    return json.dumps(value).encode("ascii")


junk_lines = st.one_of(
    # never blank (a blank line, or a byte order mark alone, is no line at all to the reader)
    st.binary(max_size=40).filter(lambda b: b.replace(b"\xef\xbb\xbf", b"").strip()),
    json_value.filter(lambda v: not isinstance(v, dict)).map(json.dumps).map(str.encode),
)


@st.composite
def image_files(draw):
    """Arbitrary image bytes: a real format's magic number (or none) followed by random or mangled data."""
    from io import BytesIO

    from processing_fixtures import gradient_image

    kind = draw(st.sampled_from(["random", "magic", "truncated", "flipped"]))
    if kind == "random":
        return draw(st.binary(max_size=200))
    if kind == "magic":
        magic = draw(st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"RIFF\0\0\0\0WEBP",
                                      b"II*\x00", b"MM\x00*", b"P6\n", b"\x00\x00\x01\x00"]))
        return magic + draw(st.binary(max_size=200))
    buffer = BytesIO()
    gradient_image(draw(st.integers(1, 40)), draw(st.integers(1, 40))).save(buffer, format=draw(st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])))
    data = buffer.getvalue()
    if kind == "truncated":
        return data[: draw(st.integers(0, len(data)))]
    position = draw(st.integers(0, len(data) - 1))
    return data[:position] + bytes([data[position] ^ draw(st.integers(1, 255))]) + data[position + 1 :]
