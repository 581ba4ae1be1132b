"""Throughput of `generate-data` against the loopback chat server, by concurrency.

    python benchmarks/bench_datagen.py --images 16 --delay 0.2 --concurrency 1 8

Each canned reply waits `--delay` seconds (a stand-in for the teacher's latency), so the ideal run
time is requests x delay / concurrency; the difference is the generator's own overhead (prompt
assembly, parsing, one fsynced append per result).
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from chat_server import ChatServer  # noqa: E402
from datagen_fixtures import canned_responses, make_contexts  # noqa: E402

from datagen.generate import run_generation  # noqa: E402
from datagen.prompting import RESPONSE_TYPES, ImageContext  # noqa: E402
from datagen.teachers import OpenAITeacher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.2, help="seconds each canned reply waits")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()

    os.environ.setdefault("BENCH_KEY", "bench")
    contexts = [ImageContext.from_record(c) for c in make_contexts(args.images)]
    requests = args.images * len(RESPONSE_TYPES)
    with ChatServer({"responses": canned_responses(delay=args.delay)}) as server, tempfile.TemporaryDirectory() as tmp:
        teacher = OpenAITeacher("bench", base_url=server.base_url, api_key_env="BENCH_KEY")
        for concurrency in args.concurrency:
            started = time.perf_counter()
            summary = run_generation(contexts, list(RESPONSE_TYPES), teacher, Path(tmp) / f"c{concurrency}.jsonl", concurrency=concurrency, progress=False)
            elapsed = time.perf_counter() - started
            ideal = requests * args.delay / concurrency
            print(f"concurrency {concurrency}: {summary.accepted}/{requests} accepted in {elapsed:.2f} s (ideal {ideal:.2f} s, {requests / elapsed:.1f} req/s)")


if __name__ == "__main__":
    main()
