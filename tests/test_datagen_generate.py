"""`llava generate-data` against a real loopback chat-completions server (tests/chat_server.py)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from chat_server import chat_server  # noqa: F401  (pytest fixture)
from datagen_fixtures import (
    COMPLEX_REPLY,
    REPLIES,
    REPO_ROOT,
    SYSTEM_MARKERS,
    canned_responses,
    make_contexts,
    run_cli,
    write_contexts,
)

from datagen.generate import rejected_path, run_generation
from datagen.prompting import RESPONSE_TYPES, ImageContext, build_messages, format_context, parse_qa_pairs
from datagen.teachers import OpenAITeacher
from datagen.instructions import detail_instructions

KEY_ENV = "DATAGEN_TEST_KEY"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")


def teacher_for(server, **kwargs):
    return OpenAITeacher(model="canned-teacher", base_url=server.base_url, api_key_env=KEY_ENV, **kwargs)


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def first_question(value):
    assert value.startswith("<image>\n") or value.endswith("\n<image>"), value
    return value.replace("<image>\n", "").replace("\n<image>", "")


def test_generator_produces_the_expected_records(chat_server, tmp_path):
    server = chat_server({"responses": canned_responses()})
    contexts = [ImageContext.from_record(c) for c in make_contexts(3)]
    output = tmp_path / "gen.jsonl"
    summary = run_generation(
        contexts, list(RESPONSE_TYPES), teacher_for(server, max_tokens=321), output, concurrency=3, price_input=2.0, price_output=10.0, progress=False
    )

    records = read_jsonl(output)
    assert summary.planned == 9 and summary.accepted == 9 and summary.rejected == {}
    assert sorted((r["image_id"], r["type"]) for r in records) == sorted((c.id, t) for c in contexts for t in RESPONSE_TYPES)
    assert read_jsonl(rejected_path(output)) == []
    for record in records:
        assert record["id"] == f"{record['image_id']}_{record['type']}"
        assert record["image"] == f"images/{record['image_id']}.jpg"
        turns = record["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        questions = [first_question(turns[0]["value"])] + [t["value"] for t in turns[2::2]]
        answers = [t["value"] for t in turns[1::2]]
        assert all("<image>" not in t["value"] for t in turns[1:])
        if record["type"] == "detail":
            assert questions[0] in detail_instructions() and answers == [REPLIES["detail"]]
        else:
            assert list(zip(questions, answers)) == parse_qa_pairs(REPLIES[record["type"]])

    requests = server.requests()
    assert len(requests) == 9
    by_image = {c.id: c for c in contexts}
    for request in requests:
        body = request["body"]
        assert body["model"] == "canned-teacher" and body["max_tokens"] == 321
        response_type = next(t for t, marker in SYSTEM_MARKERS.items() if marker in body["messages"][0]["content"])
        image_id = next(i for i in by_image if f"({i})" in body["messages"][-1]["content"])
        assert body["messages"] == build_messages(response_type, format_context(by_image[image_id]))
    # The server counts words as tokens: check the summary adds the usage of every reply.
    prompt_tokens = sum(sum(len(m["content"].split()) for m in r["body"]["messages"]) for r in requests)
    completion_tokens = sum(len(REPLIES[r["type"]].split()) for r in records)
    assert (summary.prompt_tokens, summary.completion_tokens) == (prompt_tokens, completion_tokens)
    assert summary.cost == pytest.approx((prompt_tokens * 2.0 + completion_tokens * 10.0) / 1e6)


def test_faults_are_retried_or_recorded_and_the_run_completes(chat_server, tmp_path):
    conv, detail, complex_ = (SYSTEM_MARKERS[t] for t in RESPONSE_TYPES)
    spec = {
        "faults": [
            {"match": "(img000)", "system": conv, "kind": "429", "retry_after": 1, "times": 1},
            {"match": "(img001)", "system": detail, "kind": "500", "times": 2},
            {"match": "(img002)", "system": complex_, "kind": "slow", "delay": 5, "times": 1},
            {"match": "(img003)", "system": conv, "kind": "malformed", "times": 1000},
            {"match": "(img005)", "system": detail, "kind": "500", "times": 1000},
            {"match": "(img004)", "system": conv, "kind": "unparseable", "content": "I'm sorry, I cannot see images.", "times": 1},
        ],
        "responses": [
            {"match": "(img004)", "system": detail, "content": ""},
            {"match": "(img005)", "system": complex_, "content": COMPLEX_REPLY[:40], "finish_reason": "length"},
            *canned_responses(),
        ],
    }
    server = chat_server(spec)
    contexts = [ImageContext.from_record(c) for c in make_contexts(6)]
    output = tmp_path / "gen.jsonl"
    teacher = teacher_for(server, timeout=2.0, max_retries=2)
    started = time.monotonic()
    summary = run_generation(contexts, list(RESPONSE_TYPES), teacher, output, concurrency=4, progress=False)
    assert time.monotonic() - started < 30

    accepted = {(r["image_id"], r["type"]) for r in read_jsonl(output)}
    rejected = {(r["image_id"], r["type"]): r for r in read_jsonl(rejected_path(output))}
    assert summary.accepted == 13 and len(accepted) == 13
    assert {("img000", "conversation"), ("img001", "detail"), ("img002", "complex")} <= accepted  # retried, then fine
    assert set(rejected) == {("img003", "conversation"), ("img005", "detail"), ("img004", "detail"), ("img004", "conversation"), ("img005", "complex")}
    assert not accepted & set(rejected)
    assert rejected["img003", "conversation"]["kind"] == "request" and "malformed" in rejected["img003", "conversation"]["reason"]
    assert rejected["img005", "detail"]["kind"] == "request" and "HTTP 500" in rejected["img005", "detail"]["reason"]
    assert rejected["img004", "detail"]["reason"] == "empty reply"
    assert rejected["img004", "conversation"]["reason"].startswith("unparseable: no 'Question:'")
    assert rejected["img004", "conversation"]["text"] == "I'm sorry, I cannot see images."
    assert rejected["img005", "complex"]["reason"] == "truncated (finish_reason=length)"
    assert summary.rejected == {"request failed": 2, "empty": 1, "unparseable": 1, "truncated": 1}

    log = server.requests()

    def served(image, marker):
        entries = [r for r in log if f"({image})" in r["body"]["messages"][-1]["content"] and marker in r["body"]["messages"][0]["content"]]
        return [r["served"] for r in entries], [r["time"] for r in entries]

    kinds, times = served("img000", conv)
    assert kinds == ["429", "reply"] and times[1] - times[0] >= 0.9  # Retry-After: 1 honoured
    assert served("img001", detail)[0] == ["500", "500", "reply"]
    assert served("img002", complex_)[0] == ["slow", "reply"]  # timed out after 2 s, retried
    assert served("img005", detail)[0] == ["500"] * 3  # 1 try + max_retries=2, then recorded

    # A re-run re-requests only the request failures; content rejections stay rejected.
    before = len(log)
    summary = run_generation(contexts, list(RESPONSE_TYPES), teacher, output, concurrency=4, progress=False)
    assert summary.planned == 2 and summary.skipped_done == 16
    assert len(server.requests()) - before == 2 * 1 + 3 - 1  # malformed: 1 try (not retried); 500: 3 tries
    assert len(read_jsonl(output)) == 13
    # --retry-rejected re-asks the content rejections too; only the one-off unparseable answer now succeeds.
    summary = run_generation(contexts, list(RESPONSE_TYPES), teacher, output, retry_rejected=True, progress=False)
    assert summary.planned == 5 and summary.accepted == 1
    assert ("img004", "conversation") in {(r["image_id"], r["type"]) for r in read_jsonl(output)}


def test_dry_run_prints_first_prompt_and_planned_count_without_requests(tmp_path):
    contexts = write_contexts(tmp_path / "contexts.jsonl", make_contexts(4))
    output = tmp_path / "gen.jsonl"
    output.write_text(json.dumps({"image_id": "img000", "type": "conversation"}) + "\n")
    # No server, no API key: a dry run must not need either.
    result = run_cli(
        "generate-data", "--contexts", str(contexts), "--types", "conversation,complex", "--teacher", "openai",
        "--model", "m", "--base-url", "http://127.0.0.1:9/v1", "--output", str(output), "--dry-run",
        env={"OPENAI_API_KEY": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "planned requests: 7 (4 images x 2 types, 1 already done)" in result.stdout
    assert "first prompt (complex, image img000)" in result.stdout
    expected = build_messages("complex", format_context(ImageContext.from_record(make_contexts(1)[0])))
    for message in expected:
        assert f"----- {message['role']} -----\n{message['content']}" in result.stdout
    assert output.read_text().count("\n") == 1  # the dry run left the output alone

    result = run_cli(
        "generate-data", "--contexts", str(contexts), "--types", "detail", "--model", "m", "--output", str(output), "--limit", "3", "--dry-run"
    )
    assert "planned requests: 3 (3 images x 1 types, 0 already done)" in result.stdout


def test_missing_api_key_and_unknown_type_are_clear_errors(tmp_path):
    contexts = write_contexts(tmp_path / "contexts.jsonl", make_contexts(1))
    result = run_cli("generate-data", "--contexts", str(contexts), "--model", "m", "--types", "conversation,chitchat", "--output", str(tmp_path / "o.jsonl"))
    assert result.returncode == 2 and "unknown --types ['chitchat']" in result.stderr
    result = run_cli(
        "generate-data", "--contexts", str(contexts), "--model", "m", "--api-key-env", "NO_SUCH_KEY_VAR", "--output", str(tmp_path / "o.jsonl"),
        env={"NO_SUCH_KEY_VAR": ""},
    )
    assert result.returncode != 0 and "'NO_SUCH_KEY_VAR', which is not set" in result.stderr


def test_kill_9_then_rerun_gives_exactly_one_record_per_image_and_type(chat_server, tmp_path):
    server = chat_server({"responses": canned_responses(delay=0.15)})
    n_images = 8
    contexts = write_contexts(tmp_path / "contexts.jsonl", make_contexts(n_images))
    output = tmp_path / "gen.jsonl"
    command = [
        sys.executable, "-m", "llava_cli", "generate-data", "--contexts", str(contexts), "--teacher", "openai",
        "--model", "m", "--base-url", server.base_url, "--api-key-env", KEY_ENV, "--output", str(output),
        "--concurrency", "2", "--no-progress",
    ]
    env = {**os.environ, KEY_ENV: "test-key"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(read_jsonl_lenient(output)) < 4:
        assert process.poll() is None, "the generator finished before it could be killed"
        assert time.monotonic() < deadline, "the generator wrote nothing within 60 s"
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL

    written = read_jsonl_lenient(output)
    assert 4 <= len(written) < 3 * n_images
    requests_before_rerun = len(server.requests())
    # Emulate the worst kill: one in the middle of a write, leaving a torn last line.
    with output.open("ab") as handle:
        handle.write(b'{"id": "img007_detail", "image": "images/img')

    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "dropped 1 torn last line" in result.stdout
    records = read_jsonl(output)
    keys = [(r["image_id"], r["type"]) for r in records]
    assert len(keys) == len(set(keys)) == 3 * n_images  # none lost, none duplicated
    assert set(keys) == {(f"img{i:03d}", t) for i in range(n_images) for t in RESPONSE_TYPES}
    assert records[: len(written)] == written  # the earlier lines were kept as they were
    # The re-run asked only for what was missing.
    assert len(server.requests()) - requests_before_rerun == 3 * n_images - len(written)
    summary = json.loads((tmp_path / "gen.summary.json").read_text())
    assert summary["skipped_done"] == len(written) and summary["accepted"] == 3 * n_images - len(written)


def read_jsonl_lenient(path):
    """Complete lines only (the writer may be mid-line while we poll)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in lines]
