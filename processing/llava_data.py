"""LLaVA-format datasets on the `datasets` library.

On disk (JSON array or JSONL): `{"id": str, "image": "rel/path.jpg" | ["a.jpg", ...] (optional),
"conversations": [{"from": "human", "value": "<image>\\nQuestion"}, {"from": "gpt", "value": "..."}]}`.

In memory, a `datasets.Dataset` with columns `id`, `images` (list of paths relative to the image root; empty
for text-only samples), `conversations` and `extra` (the record's other fields as JSON, so nothing is lost).
`to_trl_dataset` turns it into TRL's vision format (`messages` with typed content + `images`), images loaded
lazily from the image root when a row is read; `messages_to_llava` goes back.
"""

from __future__ import annotations

import codecs
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    LazyImageLoader,
    image_path_problem,
    resolve_image_path,
    shown_path,
)

IMAGE_PLACEHOLDER = "<image>"
LLAVA_TO_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}
ROLE_TO_LLAVA = {role: speaker for speaker, role in LLAVA_TO_ROLE.items()}
_KNOWN_FIELDS = ("id", "image", "conversations")

if TYPE_CHECKING:
    import datasets
# A placeholder together with the single newline that LLaVA data puts between it and the text ("<image>\nQ",
# "Q\n<image>"). The newline is only taken when no other whitespace touches it, so that `content_to_text` (which
# puts back a newline exactly where no whitespace separates a block from the next) restores the text exactly.
_PLACEHOLDER_SPLIT = re.compile(r"(?:(?<!\s)\n)?(" + re.escape(IMAGE_PLACEHOLDER) + r")(?:\n(?!\s))?")


@dataclass(frozen=True)
class DataProblem:
    """One problem found in a dataset file, located by file, line and sample id where known."""

    kind: str
    message: str
    file: str
    line: int | None = None
    sample_id: str | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        sample = f" (sample {self.sample_id!r})" if self.sample_id is not None else ""
        return f"{where}{sample}: {self.message}"


class LlavaDataError(ValueError):
    """A dataset file cannot be read as LLaVA data; `problem` says where and why."""

    def __init__(self, problem: DataProblem):
        super().__init__(str(problem))
        self.problem = problem


@dataclass(frozen=True)
class RawRecord:
    """One JSON value read from a dataset file, with the line it starts on."""

    line: int
    value: Any


def _line_of(data: str | bytes, position: int) -> int:
    newline = b"\n" if isinstance(data, bytes) else "\n"
    return data.count(newline, 0, position) + 1


# The id of a line that is not valid JSON (or not UTF-8) can often still be read: `"id": "..."` near its start.
_READABLE_ID = re.compile(r'"id"\s*:\s*(?:"((?:[^"\\]|\\.){0,200})"|(-?\d{1,30})\b)')


def _readable_id(text: str) -> str | None:
    match = _READABLE_ID.search(text)
    if match is None:
        return None
    if match.group(2) is not None:
        return match.group(2)
    try:
        value = json.loads(f'"{match.group(1)}"')
    except ValueError:
        return None
    return value if _is_valid_text(value) else None


def _decode_json(text: str) -> Any:
    """`json.loads`, raising only `json.JSONDecodeError`.

    `json.loads` also raises `RecursionError` for deeply nested values (`[[[[...`) and `ValueError` for integers of
    more than 4,300 digits (Python's limit on int-string conversion); both are malformed data to us.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("the value is nested too deeply", text, 0) from None
    except ValueError as error:
        raise json.JSONDecodeError(str(error).split(";")[0], text, 0) from None


def _iter_jsonl(path: Path) -> Iterator[RawRecord | DataProblem]:
    # Line by line in binary: memory stays one line whatever the file size, and a non-UTF-8 line stays one problem.
    with path.open("rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            if number == 1 and raw_line.startswith(b"\xef\xbb\xbf"):
                raw_line = raw_line[3:]  # a UTF-8 byte order mark, as some editors write
            if not raw_line.strip():
                continue
            try:
                text = raw_line.decode("utf-8")
            except UnicodeDecodeError as error:
                yield DataProblem(
                    "bad_encoding",
                    f"not valid UTF-8 text (byte {error.start} of the line)",
                    str(path),
                    number,
                    _readable_id(raw_line.decode("utf-8", errors="replace")),
                )
                continue
            try:
                yield RawRecord(number, _decode_json(text))
            except json.JSONDecodeError as error:
                yield DataProblem(
                    "malformed_json", f"malformed JSON: {error.msg} (column {error.colno})", str(path), number, _readable_id(text)
                )


class _ArrayReader:
    """A JSON array file read a chunk at a time: a text buffer, its first line number, and whether the file is done.

    `json` has no streaming decoder; `JSONDecoder.raw_decode` on a buffer that is refilled when a value runs past its
    end keeps memory at one chunk plus one record, whatever the file size (LLaVA-1.5's 665K mix is a 1 GB array).
    """

    CHUNK = 1 << 20

    def __init__(self, handle):
        self.handle = handle
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.first_line = 1
        self.eof = False
        self.bad_byte_line: int | None = None  # set when the file turns out not to be UTF-8

    def fill(self) -> bool:
        """Read one more chunk; `False` at the end of the file or at bytes that are not UTF-8."""
        if self.eof:
            return False
        chunk = self.handle.read(self.CHUNK)
        try:
            self.text += self.decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as error:
            self.bad_byte_line = self.line_of(len(self.text)) + chunk[: error.start].count(b"\n")
            self.eof = True
            return False
        self.eof = not chunk
        return bool(chunk)

    def line_of(self, position: int) -> int:
        return self.first_line + self.text.count("\n", 0, position)

    def drop_before(self, position: int) -> int:
        """Forget the text before `position` (already decoded); returns the new position (0)."""
        self.first_line += self.text.count("\n", 0, position)
        self.text = self.text[position:]
        return 0


def _iter_json_array(path: Path) -> Iterator[RawRecord | DataProblem]:
    decoder = json.JSONDecoder()
    with path.open("rb") as handle:
        reader = _ArrayReader(handle)
        while "[" not in reader.text and reader.fill():
            pass
        position = reader.text.index("[") + 1 if "[" in reader.text else len(reader.text)
        while True:
            while True:  # skip separators, reading on when the buffer runs out
                while position < len(reader.text) and reader.text[position] in " \t\r\n,":
                    position += 1
                if position < len(reader.text) or not reader.fill():
                    break
            position = reader.drop_before(position)
            if position >= len(reader.text):
                if reader.bad_byte_line is not None:
                    yield DataProblem("bad_encoding", "not valid UTF-8 text (the rest of the array cannot be read)", str(path), reader.bad_byte_line)
                else:
                    yield DataProblem("malformed_json", "the JSON array is not closed with ']'", str(path), reader.line_of(position))
                return
            if reader.text[position] == "]":
                while reader.fill():
                    pass
                rest = reader.text[position + 1 :]
                if rest.strip():
                    line = reader.line_of(position + 1 + len(rest) - len(rest.lstrip()))
                    yield DataProblem("malformed_json", f"data after the end of the JSON array (from line {line}) cannot be read", str(path), line)
                elif reader.bad_byte_line is not None:
                    yield DataProblem("bad_encoding", "not valid UTF-8 text after the end of the JSON array", str(path), reader.bad_byte_line)
                return
            while True:
                try:
                    value, end = decoder.raw_decode(reader.text, position)
                except (json.JSONDecodeError, RecursionError, ValueError) as error:
                    if reader.fill():
                        continue  # the value may only run past the buffer: read on and decode it again
                    if reader.bad_byte_line is not None:
                        yield DataProblem("bad_encoding", "not valid UTF-8 text (the rest of the array cannot be read)", str(path), reader.bad_byte_line)
                        return
                    # A syntax error inside an array leaves no safe place to resume: report it and stop.
                    line = reader.first_line + error.lineno - 1 if isinstance(error, json.JSONDecodeError) else reader.line_of(position)
                    why = error.msg if isinstance(error, json.JSONDecodeError) else "a value nested too deeply or too large"
                    yield DataProblem(
                        "malformed_json",
                        f"malformed JSON: {why}; the rest of the array (from line {reader.line_of(position)}) cannot be read",
                        str(path),
                        line,
                        _readable_id(reader.text[position : position + 2000]),
                    )
                    return
                number = isinstance(value, (int, float)) and not isinstance(value, bool)
                if number and not reader.text[end:].strip("0123456789+-.eE") and reader.fill():
                    continue  # a number cut by the buffer's end ("1" of "1e+16") would decode as a shorter one
                break
            yield RawRecord(reader.line_of(position), value)
            position = end


def iter_raw_records(path: str | os.PathLike) -> Iterator[RawRecord | DataProblem]:
    """Yield every record of a LLaVA JSON (array) or JSONL file, or a `DataProblem` for what cannot be read.

    A `.jsonl`/`.ndjson` file is JSON lines; any other file is a JSON array when it starts with `[`. JSON lines
    are read one at a time and reading goes on after a bad line; a JSON array is read whole and stops at its first
    syntax error (reported, with the line it stops at).
    """
    path = Path(path)
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path)
        return
    with path.open("rb") as handle:
        start = handle.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if start[:1] == b"[":
        yield from _iter_json_array(path)
    else:
        yield from _iter_jsonl(path)


def record_images(record: dict) -> list[str]:
    """The record's image paths as a list (`image` may be absent, a string or a list)."""
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def record_id(record: Any) -> str | None:
    """The sample id of a record as a string, or `None` when it has no usable one (missing, not a string or an
    integer, or text that is not valid Unicode)."""
    if not isinstance(record, dict):
        return None
    value = record.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    if isinstance(value, int):
        return str(value)
    return value if _is_valid_text(value) else None


def _is_valid_text(text: str) -> bool:
    """Whether `text` can be written as UTF-8: JSON escapes can produce lone surrogates (`"\\ud800"`), which the
    tokenizer, Arrow and every UTF-8 file writer refuse."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def conversation_problems(record: Any) -> list[tuple[str, str]]:
    """Structural problems of one record as `(kind, message)` pairs; empty when the record is well formed.

    Checks: the record is an object with a string `id` and a non-empty `conversations` list of
    `{"from": "human"|"gpt"|"system", "value": str}` turns, an optional system turn first, then human and gpt
    turns alternating, starting with human and ending with gpt, no empty value, `<image>` placeholders only in
    human turns (an image in an answer would put image tokens among the supervised tokens) and as many of them
    as images, and every string valid Unicode. It never raises, whatever the JSON value.
    """
    if not isinstance(record, dict):
        return [("bad_record", f"expected a JSON object, found {_json_type(record)}")]
    problems = []
    if record_id(record) is None:
        problems.append(("bad_record", f"missing or unusable 'id' (found {_json_type(record.get('id'))}); it must be a string or an integer"))
    image = record.get("image")
    images_ok = image is None or isinstance(image, str) or (isinstance(image, list) and all(isinstance(i, str) for i in image))
    if not images_ok:
        problems.append(("bad_record", f"'image' must be a path or a list of paths, found {_json_type(image)}"))
    else:
        for path in record_images(record):
            reason = image_path_problem(path)
            if reason is not None:
                problems.append(("bad_image_path", f"{shown_path(path)}: {reason}"))
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        return [*problems, ("empty_conversation", f"missing or empty 'conversations' (found {_json_type(turns)})")]
    malformed = [
        index
        for index, turn in enumerate(turns)
        if not (isinstance(turn, dict) and isinstance(turn.get("value"), str) and isinstance(turn.get("from"), str))
        or turn["from"] not in LLAVA_TO_ROLE
    ]
    if malformed:
        return [*problems, ("bad_turn", f"turn(s) {malformed[:10]}: every turn needs 'from' (human, gpt or system) and a string 'value'")]
    problems += _turn_problems(turns)
    if images_ok:
        placeholders = sum(turn["value"].count(IMAGE_PLACEHOLDER) for turn in turns)
        n_images = len(record_images(record))
        if placeholders != n_images:
            problems.append(("image_token_mismatch", f"{placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {n_images} image(s)"))
    return problems


def _turn_problems(turns: list[dict[str, str]]) -> list[tuple[str, str]]:
    """The problems of well-typed turns: invalid text, order, empty values, placeholders outside human turns."""
    problems = []
    if not all(_is_valid_text(turn["value"]) for turn in turns):
        problems.append(("bad_text", "a turn's text is not valid Unicode (a lone surrogate escape such as \\ud800)"))
    order = _turn_order_problem([turn["from"] for turn in turns])
    if order is not None:
        problems.append(order)
    empty = [index for index, turn in enumerate(turns) if not turn["value"].strip()]
    if empty:
        problems.append(("empty_turn", f"empty turn(s) at position {empty[:10]}"))
    in_answers = [index for index, turn in enumerate(turns) if turn["from"] != "human" and IMAGE_PLACEHOLDER in turn["value"]]
    if in_answers:
        problems.append(
            ("image_outside_human_turn", f"{IMAGE_PLACEHOLDER} in a {turns[in_answers[0]]['from']} turn (position {in_answers[:10]}); images belong in human turns")
        )
    return problems


def _turn_order_problem(speakers: list[str]) -> tuple[str, str] | None:
    """An optional system turn first, then human and gpt alternating, from human to gpt."""
    if speakers[0] == "system":
        speakers = speakers[1:]
    if "system" in speakers:
        return ("turn_order", "a system turn may only come first")
    if not speakers:
        return ("empty_conversation", "the conversation has no human or gpt turn")
    if speakers[0] != "human":
        return ("turn_order", f"the conversation starts with {speakers[0]!r}, not 'human'")
    if any(a == b for a, b in zip(speakers, speakers[1:])):
        return ("turn_order", "human and gpt turns do not alternate")
    if speakers[-1] != "gpt":
        return ("turn_order", "the conversation ends without a gpt answer")
    return None


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "nothing" if value is None else names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class CheckedRecord:
    """One line (JSONL) or element (JSON array) of a dataset file after the structural checks.

    `record` is the JSON object when the line could be read as one, `sample_id` its id when readable (also from a
    line that is not valid JSON), `problems` everything wrong with it (empty when the record can be used).
    """

    line: int
    record: dict | None
    sample_id: str | None
    problems: tuple[DataProblem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def special_tokens_in_text(tokenizer) -> tuple[str, ...]:
    """The tokenizer's special tokens that data text must not contain, longest first: the chat markup
    (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...) that the tokenizer turns into its control ids wherever it appears, so
    an answer or question holding one would fake a turn boundary. The image placeholder is left out: it belongs in
    human turns and has its own checks."""
    special = set(getattr(tokenizer, "all_special_tokens", []))
    special |= {str(token) for token in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(token, "special", False)}
    special.discard(IMAGE_PLACEHOLDER)
    return tuple(sorted((token for token in special if token.strip()), key=lambda token: (-len(token), token)))


def _special_token_problems(turns: list[dict[str, str]], special_tokens: tuple[str, ...]) -> list[tuple[str, str]]:
    for index, turn in enumerate(turns):
        positions = {token: turn["value"].find(token) for token in special_tokens if token in turn["value"]}
        if positions:
            found = min(positions, key=positions.get)  # the first in the text, the longest where several start there
            return [("special_token_in_text", f"turn {index} ({turn['from']}) contains the tokenizer's special token "
                     f"{found!r}, which the model would read as chat markup (a fake turn boundary), not as text")]
    return []


def check_records(
    path: str | os.PathLike, image_root: str | os.PathLike | None = None, special_tokens: tuple[str, ...] = ()
) -> Iterator[CheckedRecord]:
    """Read a LLaVA JSON/JSONL file and check each record's structure: THE place where any malformed line or
    record becomes a `DataProblem` (located by file:line, and by sample id where the id can be read) before
    anything else can throw on it.

    `llava validate` (`processing.validate.check_dataset`), the strict reader (`load_llava_dataset`) and
    training's `on_bad_data: skip` all read through it, so they agree on what is bad. With `image_root`, every
    image path is also resolved inside it (escapes, symlink loops); image files are not opened here. With
    `special_tokens` (`special_tokens_in_text(tokenizer)`), a turn whose text holds one of them is a problem too.
    """
    for item in iter_raw_records(path):
        if isinstance(item, DataProblem):
            yield CheckedRecord(item.line, None, item.sample_id, (item,))
            continue
        record = item.value if isinstance(item.value, dict) else None
        sample_id = record_id(record)
        found = conversation_problems(item.value)
        if special_tokens and not found:
            found = _special_token_problems(record["conversations"], special_tokens)
        if image_root is not None and not any(kind in ("bad_record", "bad_image_path") for kind, _ in found):
            for image in record_images(record):
                try:
                    resolve_image_path(image_root, image)
                except ImageLoadError as error:
                    found.append((error.kind, str(error)))
        problems = tuple(DataProblem(kind, message, str(path), item.line, sample_id) for kind, message in found)
        yield CheckedRecord(item.line, record, sample_id, problems)


def _normalise(record: dict) -> dict:
    extra = {key: value for key, value in record.items() if key not in _KNOWN_FIELDS}
    return {
        "id": record_id(record),
        "images": record_images(record),
        "conversations": [{"from": turn["from"], "value": turn["value"]} for turn in record["conversations"]],
        "extra": json.dumps(extra, ensure_ascii=False, sort_keys=True),
    }


def load_llava_dataset(
    path: str | os.PathLike,
    image_root: str | os.PathLike | None = None,
    exclude_ids: set[str] | None = None,
    skip_unreadable_lines: bool = False,
    exclude_lines: set[int] | None = None,
) -> datasets.Dataset:
    """Read a LLaVA JSON/JSONL file into a `datasets.Dataset` (columns `id`, `images`, `conversations`, `extra`).

    Images are not opened here (see `to_trl_dataset` for lazy loading); with `image_root`, every image path is
    checked to stay inside it. The reader is strict: the first bad line or malformed sample raises
    `LlavaDataError` naming file, line and sample id (the checks are `check_records`'). To skip bad samples
    instead, run `processing.validate.check_dataset` first, report what it found, and pass its `failing_lines`
    as `exclude_lines` (what training's `on_bad_data: skip` does). `exclude_ids` leaves samples out by id, and
    `skip_unreadable_lines=True` leaves out bad lines that have no readable id.
    """
    import datasets  # here rather than at the top: `llava validate` does not need it

    exclude_ids = exclude_ids or set()
    exclude_lines = exclude_lines or set()
    rows = []
    for checked in check_records(path, image_root):
        if checked.line in exclude_lines or (checked.sample_id is not None and checked.sample_id in exclude_ids):
            continue
        if checked.problems:
            if skip_unreadable_lines and checked.sample_id is None:
                continue
            raise LlavaDataError(checked.problems[0])
        rows.append(_normalise(checked.record))
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "images": datasets.Sequence(datasets.Value("string")),
            "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
            "extra": datasets.Value("string"),
        }
    )
    if not rows:  # `Dataset.from_list([])` cannot match the features and raises; an empty table can
        return datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    return datasets.Dataset.from_list(rows, features=features)


def text_to_content(text: str) -> list[dict[str, Any]]:
    """Split a LLaVA turn into typed blocks: `"<image>\\nQ"` -> `[{"type": "image"}, {"type": "text", "text": "Q"}]`."""
    blocks = []
    for piece in _PLACEHOLDER_SPLIT.split(text):
        if piece == IMAGE_PLACEHOLDER:
            blocks.append({"type": "image", "text": None})
        elif piece:
            blocks.append({"type": "text", "text": piece})
    return blocks


def content_to_text(content: str | list[dict[str, Any]]) -> str:
    """Inverse of `text_to_content`, and the same text the chat templates' `render_content` macro writes.

    Blocks are joined with a newline, except where the text on either side of the join already has whitespace
    there: `[image, "Q"]` -> `"<image>\nQ"`, `["Compare ", image, " and"]` -> `"Compare <image> and"`.
    """
    if isinstance(content, str):
        return content
    text = ""
    for block in content:
        piece = IMAGE_PLACEHOLDER if block["type"] == "image" else (block.get("text") or "")
        if not piece:
            continue
        if text and not (text[-1].isspace() or piece[0].isspace()):
            text += "\n"
        text += piece
    return text


def place_first_turn_image(content: list[dict[str, Any]], image_first: bool) -> list[dict[str, Any]]:
    """Eq. (2) of the paper: put the first turn's images all before or all after its text."""
    images = [block for block in content if block["type"] == "image"]
    texts = [block for block in content if block["type"] != "image"]
    return images + texts if image_first else texts + images


def llava_to_messages(
    conversations: list[dict[str, str]], image_first: bool | None = None
) -> list[dict[str, Any]]:
    """LLaVA turns -> TRL messages with typed content.

    Args:
        conversations: `[{"from": "human"|"gpt"|"system", "value": str}, ...]`.
        image_first: `None` keeps the images where the data puts them; `True`/`False` moves the first user
            turn's images before/after its question (eq. (2)). Later turns are never changed.
    """
    messages = []
    for turn in conversations:
        role = LLAVA_TO_ROLE[turn["from"]]
        content = text_to_content(turn["value"])
        if image_first is not None and role == "user" and not any(m["role"] == "user" for m in messages):
            content = place_first_turn_image(content, image_first)
        messages.append({"role": role, "content": content})
    return messages


def messages_to_llava(example: dict[str, Any]) -> dict[str, Any]:
    """TRL example (`messages`, `images` as relative paths, optional `id`/`extra`) -> LLaVA record."""
    record: dict[str, Any] = {}
    if example.get("id") is not None:
        record["id"] = example["id"]
    images = list(example.get("images") or [])
    if any(not isinstance(image, str) for image in images):
        raise ValueError("messages_to_llava needs image paths in `images`, not loaded images.")
    if len(images) == 1:
        record["image"] = images[0]
    elif images:
        record["image"] = images
    record["conversations"] = [
        {"from": ROLE_TO_LLAVA[message["role"]], "value": content_to_text(message["content"])}
        for message in example["messages"]
    ]
    if example.get("extra"):
        record.update(json.loads(example["extra"]))
    return record


def image_first_draw(seed: int, sample_id: str, image_first_ratio: float) -> bool:
    """The seeded coin of eq. (2) for one sample; it depends only on (seed, id), not on dataset order."""
    return random.Random(f"{seed}/{sample_id}").random() < image_first_ratio


def to_trl_dataset(
    dataset: datasets.Dataset,
    image_root: str | os.PathLike | None = None,
    image_first_ratio: float | None = None,
    seed: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> datasets.Dataset:
    """LLaVA dataset (from `load_llava_dataset`) -> TRL vision dataset with `messages` and `images`.

    Args:
        image_root: when given, reading a row loads its images (RGB, safely, see `processing.images`); the
            stored column keeps the relative paths, so nothing is decoded until a row is used.
        image_first_ratio: `None` keeps the data's placement; a number p in [0, 1] applies eq. (2): each
            sample's first-turn images go before the question with probability p, after it otherwise, drawn
            from `seed` and the sample id (reproducible, independent of order and sharding).
    """
    if image_first_ratio is not None and not 0.0 <= image_first_ratio <= 1.0:
        raise ValueError(f"image_first_ratio must be in [0, 1], got {image_first_ratio}")

    def convert(example: dict[str, Any]) -> dict[str, Any]:
        image_first = None
        if image_first_ratio is not None and example["images"]:
            image_first = image_first_draw(seed, example["id"], image_first_ratio)
        return {"messages": llava_to_messages(example["conversations"], image_first)}

    converted = dataset.map(convert, remove_columns=["conversations"], desc="Reading conversations")
    if image_root is not None:
        converted = converted.with_transform(LazyImageLoader(image_root, max_pixels))
    return converted


__all__ = [
    "CheckedRecord",
    "DataProblem",
    "LlavaDataError",
    "RawRecord",
    "check_records",
    "content_to_text",
    "conversation_problems",
    "image_first_draw",
    "iter_raw_records",
    "llava_to_messages",
    "load_llava_dataset",
    "messages_to_llava",
    "place_first_turn_image",
    "record_id",
    "record_images",
    "special_tokens_in_text",
    "text_to_content",
    "to_trl_dataset",
]
