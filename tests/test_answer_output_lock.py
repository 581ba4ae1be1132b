"""Two `llava answer` runs on one `--output`: the second refuses while the first holds the file (an OS file lock
across processes), and a rerun reports and drops duplicate question ids."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT
from inference.batch import answer_question_file
from processing.jsonl_store import OutputInUseError, ResumableJsonl


class EchoAnswerer:
    settings = None

    def __call__(self, conversations, images, settings=None):
        return [conversation[0]["content"][-1]["text"].upper() for conversation in conversations]


QUESTIONS = [{"question_id": f"q{i}", "text": f"question {i}"} for i in range(3)]


def test_second_run_refuses_while_another_process_holds_the_output(tmp_path):
    output = tmp_path / "answers" / "a.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys
            from processing.jsonl_store import ResumableJsonl
            with ResumableJsonl({str(output)!r}):
                print("held", flush=True)
                sys.stdin.readline()
        """)],
        cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputInUseError, match="in use by another run"):
            answer_question_file(QUESTIONS, EchoAnswerer(), output, show_progress=False)
        assert output.read_text() == ""
    finally:
        holder.communicate("\n", timeout=60)
    assert holder.returncode == 0
    # Once the first run is done, the file is free again.
    assert len(answer_question_file(QUESTIONS, EchoAnswerer(), output, show_progress=False)) == 3


def test_rerun_reports_and_drops_duplicate_ids(tmp_path, caplog):
    output = tmp_path / "a.jsonl"
    first = {"question_id": "q0", "prompt": "question 0", "text": "FIRST", "model_id": "", "generation": None}
    second = dict(first, text="SECOND")
    output.write_text(json.dumps(first) + "\n" + json.dumps(second) + "\n")
    with caplog.at_level(logging.WARNING):
        answers = answer_question_file(QUESTIONS, EchoAnswerer(), output, show_progress=False)
    assert "dropped 1 duplicate record(s) of question_id 'q0'" in caplog.text
    assert answers["q0"]["text"] == "FIRST"
    ids = [json.loads(line)["question_id"] for line in output.read_text().splitlines()]
    assert sorted(ids) == ["q0", "q1", "q2"]
    with ResumableJsonl(output) as store:
        assert store.duplicates == []
