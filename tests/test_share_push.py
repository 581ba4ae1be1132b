"""`llava push`: dry run, refusal of folders that fail preflight, failures that say how to resume, token hygiene."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from hub_upload.export import export_model
from hub_upload.push import PushError, plan_upload, resume_command
from share_fixtures import save_tiny_training_output

FAKE_TOKEN = "hf_FAKEtokenDoNotLeak0123456789abcdefXYZ"


class FakeHub(http.server.ThreadingHTTPServer):
    """A loopback stand-in for huggingface.co that records every request and refuses it."""

    def __init__(self):
        self.requests: list[tuple[str, str, dict]] = []
        super().__init__(("127.0.0.1", 0), _RefusingHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _RefusingHandler(http.server.BaseHTTPRequestHandler):
    def _refuse(self):
        self.server.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        body = json.dumps({"error": "fake hub: storage is full"}).encode()
        self.send_response(400)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _refuse

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def fake_hub():
    server = FakeHub()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("push")
    return export_model(save_tiny_training_output(work / "run"), work / "tiny-llava")


def push_env(tmp_path: Path, hub: FakeHub, token: str | None = FAKE_TOKEN) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_ENDPOINT=hub.url, HF_HUB_VERBOSITY="debug",
               TRANSFORMERS_VERBOSITY="debug", HF_HUB_DISABLE_TELEMETRY="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_push(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llava_cli", "push", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_token_absent(result: subprocess.CompletedProcess, tmp_path: Path) -> None:
    """The token appears in no output and in no file written under the test's folders (logs, caches)."""
    assert FAKE_TOKEN not in result.stdout and FAKE_TOKEN not in result.stderr
    assert FAKE_TOKEN[3:20] not in result.stdout + result.stderr  # not even partly
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert FAKE_TOKEN.encode() not in path.read_bytes(), path


def test_dry_run_lists_exact_files_and_operations_without_network(export_folder, fake_hub, tmp_path):
    result = run_push(str(export_folder), "--repo-id", "me/tiny-llava", "--private", "--revision", "v1",
                      "--dry-run", env=push_env(tmp_path, fake_hub))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    files = sorted(p for p in export_folder.iterdir() if p.is_file())
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ") and " B  (" in line]
    assert listed == [p.name for p in files]
    for path in files:
        assert f"{path.stat().st_size:,d} B" in out, path.name
    assert f"({len(files)} files" in out
    assert "create_repo me/tiny-llava (model, private" in out and "create_branch 'v1'" in out
    assert "upload_folder: " in out and "branch 'v1'" in out
    assert "preflight PASSED" in out and "dry run: nothing was sent" in out
    assert fake_hub.requests == []
    assert_token_absent(result, tmp_path)


def test_failed_upload_says_how_to_resume_and_never_shows_the_token(export_folder, fake_hub, tmp_path):
    result = run_push(str(export_folder), "--repo-id", "me/tiny-llava", "--create-pr", env=push_env(tmp_path, fake_hub))
    assert result.returncode == 1
    assert "upload to me/tiny-llava failed during create_repo" in result.stderr
    assert "fake hub: storage is full" in result.stderr
    assert f"re-run `llava push {export_folder} --repo-id me/tiny-llava --revision refs/pr/<N>`" in result.stderr
    # The token was really used (sent to the Hub, and only there)...
    assert fake_hub.requests and fake_hub.requests[0][2].get("authorization") == f"Bearer {FAKE_TOKEN}"
    # ...and shown nowhere, even with both libraries logging at debug level.
    assert_token_absent(result, tmp_path)


def test_push_refuses_a_folder_that_fails_preflight(export_folder, fake_hub, tmp_path):
    broken = shutil.copytree(export_folder, tmp_path / "broken")
    (broken / "chat_template.jinja").unlink()
    result = run_push(str(broken), "--repo-id", "me/tiny-llava", env=push_env(tmp_path, fake_hub))
    assert result.returncode == 1
    assert "chat_template.jinja" in result.stdout and "refusing to upload" in result.stderr
    assert fake_hub.requests == []


def test_push_without_a_token_says_how_to_log_in(export_folder, fake_hub, tmp_path):
    result = run_push(str(export_folder), "--repo-id", "me/tiny-llava", env=push_env(tmp_path, fake_hub, token=None))
    assert result.returncode == 1 and "HF_TOKEN" in result.stderr and "hf auth login" in result.stderr
    assert fake_hub.requests == []


def test_plan_validation(export_folder, tmp_path):
    with pytest.raises(PushError, match="refs/pr/N"):
        plan_upload(export_folder, "me/x", create_pr=True, revision="dev")
    with pytest.raises(PushError, match="ORG/NAME"):
        plan_upload(export_folder, "just-a-name")
    with pytest.raises(PushError, match="llava export"):
        plan_upload(tmp_path / "missing", "me/x")
    plan = plan_upload(export_folder, "me/x", revision="refs/pr/3")
    assert not any("create_branch" in op for op in plan.operations())
    assert resume_command(plan).endswith("--repo-id me/x --revision refs/pr/3")
