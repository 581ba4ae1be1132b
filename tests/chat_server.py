"""A loopback HTTP server that speaks the OpenAI chat-completions protocol, for tests.

It runs as a separate process (`python tests/chat_server.py SPEC.json`), so clients talk to it over
real sockets exactly as they would to a hosted API. Replies are canned and keyed by request content;
faults can be injected per key. The server exits by itself after `max_lifetime` seconds.

Use from tests:

    from chat_server import ChatServer

    spec = {
        "responses": [{"match": "fire hydrant", "content": "Question:\\nWhat color...", "finish_reason": "stop"}],
        "faults": [{"match": "fire hydrant", "kind": "429", "times": 1, "retry_after": 0.2}],
        "default": {"content": "I do not know."},      # optional; without it unmatched requests get 404
    }
    with ChatServer(spec) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="test")
        ...
        server.requests()  # every request received so far: [{"path", "body", "served", "time"}, ...]

or with the pytest fixture `chat_server` (import it into the test module): `chat_server(spec)` starts a
server that is stopped after the test.

Spec keys:
- `responses`: list of `{"match", "system"?, "content", "finish_reason"="stop", "prompt_tokens"?, "completion_tokens"?,
  "delay"?}` (`delay`: seconds to wait before replying, to make a run slow enough to interrupt).
  An entry matches a request when `match` (default "") is a substring of the content of the LAST
  message (the query; few-shot examples earlier in the prompt do not count) and the optional
  `system` is a substring of the system message. The first matching entry wins.
- `faults`: list of `{"match", "system"?, "kind", "times"=1, ...}`; the first `times` matching
  requests get the fault instead of the reply. Kinds:
  `"429"` (status 429 with a `Retry-After: <retry_after>` header, default 1 s),
  `"500"` (status 500), `"slow"` (waits `delay` seconds, default 5, before the normal reply: a client
  timeout shorter than that sees a timeout), `"malformed"` (status 200 with a body that is not JSON),
  `"unparseable"` (a well-formed reply whose answer is `content`, default "Sorry, I can't help with
  that.", i.e. not in the format the client expects). A permanently wrong answer is simply a canned
  response.
- `default`: response used when nothing matches.
Token counts default to the whitespace-separated word counts of the prompt and the reply.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SLOW_REPLY_CAP_S = 30.0  # no injected delay may hold a server thread longer than this


class _State:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.fault_counts = [0] * len(spec.get("faults", []))
        self.log: list[dict[str, Any]] = []

    def pick(self, messages: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The fault to inject (if any) and the canned response for a request with these messages."""

        def matches(entry: dict[str, Any]) -> bool:
            system = str(messages[0].get("content", "")) if messages[0].get("role") == "system" else ""
            return entry.get("match", "") in str(messages[-1].get("content", "")) and entry.get("system", "") in system

        with self.lock:
            fault = None
            for index, candidate in enumerate(self.spec.get("faults", [])):
                if matches(candidate) and self.fault_counts[index] < candidate.get("times", 1):
                    self.fault_counts[index] += 1
                    fault = candidate
                    break
        response = next((r for r in self.spec.get("responses", []) if matches(r)), self.spec.get("default"))
        return fault, response


def _make_handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. timed out); nothing to do

        def do_GET(self) -> None:
            if self.path == "/_requests":
                with state.lock:
                    body = json.dumps(state.log).encode()
                self._send(200, body)
            else:
                self._send(404, b'{"error": {"message": "not found"}}')

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
                messages = body["messages"]
                query = str(messages[-1]["content"])
            except (ValueError, KeyError, IndexError, TypeError):
                self._send(400, b'{"error": {"message": "bad request body"}}')
                return
            fault, response = state.pick(messages)
            with state.lock:
                state.log.append(
                    {"path": self.path, "body": body, "served": fault["kind"] if fault else "reply", "time": time.time()}
                )
            if not self.path.endswith("/chat/completions"):
                self._send(404, b'{"error": {"message": "unknown path"}}')
                return
            if fault is not None:
                kind = fault["kind"]
                if kind == "429":
                    headers = {"Retry-After": str(fault.get("retry_after", 1))}
                    self._send(429, b'{"error": {"message": "rate limited", "type": "rate_limit"}}', headers)
                    return
                if kind == "500":
                    self._send(500, b'{"error": {"message": "internal error", "type": "server_error"}}')
                    return
                if kind == "malformed":
                    self._send(200, b'{"id": "chatcmpl-x", "choices": [{"mess')
                    return
                if kind == "unparseable":
                    response = {"content": fault.get("content", "Sorry, I can't help with that."), "finish_reason": "stop"}
                elif kind == "slow":
                    time.sleep(min(float(fault.get("delay", 5.0)), SLOW_REPLY_CAP_S))
                else:
                    self._send(500, json.dumps({"error": {"message": f"unknown fault kind {kind!r}"}}).encode())
                    return
            if response is not None and response.get("delay"):
                time.sleep(min(float(response["delay"]), SLOW_REPLY_CAP_S))
            if response is None:
                self._send(404, json.dumps({"error": {"message": f"no canned response for {query[:80]!r}"}}).encode())
                return
            prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
            content = response["content"]
            reply = {
                "id": f"chatcmpl-{len(state.log)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "canned"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": response.get("finish_reason", "stop"),
                    }
                ],
                "usage": {
                    "prompt_tokens": response.get("prompt_tokens", prompt_words),
                    "completion_tokens": response.get("completion_tokens", len(content.split())),
                    "total_tokens": response.get("prompt_tokens", prompt_words)
                    + response.get("completion_tokens", len(content.split())),
                },
            }
            self._send(200, json.dumps(reply).encode())

    return Handler


def serve(spec: dict[str, Any], port: int = 0, max_lifetime: float = 300.0) -> None:
    """Serve `spec` on 127.0.0.1:`port` (0: a free port), print `PORT <n>` and serve until killed or timed out."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(_State(spec)))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    timer = threading.Timer(max_lifetime, server.shutdown)
    timer.daemon = True
    timer.start()
    server.serve_forever()


class ChatServer:
    """Start the server in a child process; use as a context manager or call `start()` / `stop()`."""

    def __init__(self, spec: dict[str, Any], max_lifetime: float = 300.0, spec_dir: str | os.PathLike | None = None):
        self.spec = spec
        self.max_lifetime = max_lifetime
        self.spec_dir = Path(spec_dir) if spec_dir else None
        self.process: subprocess.Popen | None = None
        self.port: int | None = None

    @property
    def base_url(self) -> str:
        """The API root to give an OpenAI client (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> ChatServer:
        import tempfile

        spec_dir = self.spec_dir or Path(tempfile.mkdtemp(prefix="chat_server_"))
        spec_path = spec_dir / "chat_server_spec.json"
        spec_path.write_text(json.dumps(self.spec))
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(spec_path), "--max-lifetime", str(self.max_lifetime)],
            stdout=subprocess.PIPE,
            text=True,
        )
        line = self.process.stdout.readline()  # blocks until the server is listening (or died)
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"chat server failed to start (first output line: {line!r})")
        self.port = int(line.split()[1])
        return self

    def requests(self) -> list[dict[str, Any]]:
        """Every request the server received so far, in arrival order."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"GET /_requests HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data.split(b"\r\n\r\n", 1)[1])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@pytest.fixture
def chat_server(tmp_path):
    """Factory fixture: `chat_server(spec)` starts a `ChatServer`; all are stopped after the test."""
    servers: list[ChatServer] = []

    def start(spec: dict[str, Any], max_lifetime: float = 120.0) -> ChatServer:
        server = ChatServer(spec, max_lifetime=max_lifetime, spec_dir=tmp_path).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Canned OpenAI chat-completions server for tests.")
    parser.add_argument("spec", help="JSON spec file (see the module docstring)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--max-lifetime", type=float, default=300.0, help="exit after this many seconds")
    args = parser.parse_args()
    serve(json.loads(Path(args.spec).read_text()), port=args.port, max_lifetime=args.max_lifetime)
