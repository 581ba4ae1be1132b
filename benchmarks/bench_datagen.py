"""Throughput of `generate-data` against a loopback chat server, by concurrency.

    python benchmarks/bench_datagen.py --images 16 --delay 0.2 --concurrency 1 8

The server (a child process, so the generator's threads have the interpreter to themselves) speaks the OpenAI
chat-completions protocol and answers every request with a correct canned reply of its response type after
`--delay` seconds, a stand-in for the teacher's latency. The ideal run time is requests x delay / concurrency; the
difference is the generator's own overhead (prompt assembly, parsing, one fsynced append per result).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datagen.generate import run_generation  # noqa: E402
from datagen.prompting import RESPONSE_TYPES, ImageContext  # noqa: E402
from datagen.teachers import OpenAITeacher  # noqa: E402

# A phrase only the system prompt of each response type contains (datagen/prompts/<type>_system.txt), and a reply
# in the format that type's parser expects.
SYSTEM_MARKERS = {"conversation": "Design a conversation", "detail": "in a detailed manner", "complex": "one plausible question"}
REPLIES = {
    "conversation": "Question:\nWhat animal is in the image?\n===\nAnswer:\nA brown dog.\n===\nQuestion:\nWhere is it?\n"
    "===\nAnswer:\nIn a park, on the grass.",
    "detail": "A brown dog runs across the grass of a park, with a frisbee flying above it to the right.",
    "complex": "Question:\nWhy might the dog be running?\n===\nAnswer:\nIt is probably chasing the frisbee thrown by its owner.",
}
API_KEY_ENV = "BENCH_KEY"


def make_contexts(count: int) -> list[ImageContext]:
    """`count` synthetic images, each with two captions and two boxes."""
    return [
        ImageContext.from_record({
            "id": f"img{i:03d}", "image": f"images/img{i:03d}.jpg",
            "captions": [f"A dog plays in a park (img{i:03d}).", f"A brown dog runs on the grass (img{i:03d})."],
            "boxes": [{"name": "dog", "bbox": [0.1, 0.2, 0.5, 0.8]}, {"name": "frisbee", "bbox": [0.6, 0.1, 0.7, 0.2]}],
        })
        for i in range(count)
    ]


class CannedTeacherHandler(BaseHTTPRequestHandler):
    """POST .../chat/completions: the canned reply of the request's response type, after `delay` seconds."""

    protocol_version = "HTTP/1.1"
    delay = 0.0

    def log_message(self, *args) -> None:  # no line per request
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        system = next((str(m.get("content", "")) for m in body["messages"] if m.get("role") == "system"), "")
        kind = next((kind for kind, marker in SYSTEM_MARKERS.items() if marker in system), None)
        if kind is None:
            self.send_error(404, "no canned reply for this system prompt")
            return
        time.sleep(self.delay)
        content = REPLIES[kind]
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        reply = json.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": body.get("model", "canned"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_words, "completion_tokens": len(content.split()),
                      "total_tokens": prompt_words + len(content.split())},
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def serve(port_queue, delay: float) -> None:
    handler = type("Handler", (CannedTeacherHandler,), {"delay": delay})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    port_queue.put(server.server_address[1])
    server.serve_forever()


@contextmanager
def canned_teacher_server(delay: float):
    """The API root (`http://127.0.0.1:PORT/v1`) of a canned chat server running in a child process."""
    port_queue = multiprocessing.Queue()
    process = multiprocessing.Process(target=serve, args=(port_queue, delay), daemon=True)
    process.start()
    try:
        yield f"http://127.0.0.1:{port_queue.get(timeout=30)}/v1"
    finally:
        process.terminate()
        process.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16, help="synthetic images (each gets all three types)")
    parser.add_argument("--delay", type=float, default=0.2, help="seconds each canned reply waits")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="concurrency levels to time")
    args = parser.parse_args()

    os.environ.setdefault(API_KEY_ENV, "bench")
    contexts = make_contexts(args.images)
    requests = args.images * len(RESPONSE_TYPES)
    with canned_teacher_server(args.delay) as base_url, tempfile.TemporaryDirectory() as tmp:
        teacher = OpenAITeacher("bench", base_url=base_url, api_key_env=API_KEY_ENV)
        for concurrency in args.concurrency:
            started = time.perf_counter()
            summary = run_generation(contexts, list(RESPONSE_TYPES), teacher, Path(tmp) / f"c{concurrency}.jsonl", concurrency=concurrency, progress=False)
            elapsed = time.perf_counter() - started
            ideal = requests * args.delay / concurrency
            print(f"concurrency {concurrency}: {summary.accepted}/{requests} accepted in {elapsed:.2f} s (ideal {ideal:.2f} s, {requests / elapsed:.1f} req/s)")


if __name__ == "__main__":
    main()
