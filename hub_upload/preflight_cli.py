"""`llava preflight OUT`: check that an export folder loads and runs for a Hub user, offline."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava preflight",
        description=(
            "Check an export folder before upload: every required file is present (a missing one is named), "
            "then, in a fresh process with an empty HF_HOME and HF_HUB_OFFLINE=1, the folder is placed in the Hub "
            "cache layout and loaded by repo id through AutoConfig, AutoModel, AutoModelForCausalLM, "
            "AutoModelForImageTextToText and AutoProcessor (trust_remote_code=True), and run through "
            "pipeline('image-to-text') and pipeline('image-text-to-text') on a real photo. Exit status 0 means passed."
        ),
    )
    parser.add_argument("folder", help="export folder (the OUT of `llava export SRC OUT`)")
    parser.add_argument("--repo-id", default=None,
                        help="repo id to load it as (default: local/<folder name>); `llava push` uses its --repo-id")
    parser.add_argument("--image", default=None,
                        help="photo for the pipeline checks (default: scikit-image's astronaut photo)")
    parser.add_argument("--base-model", default=None,
                        help="adapter folders only: local folder of the base model the adapter applies to")
    parser.add_argument("--max-new-tokens", type=int, default=4, help="tokens each pipeline check generates (default 4)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds allowed for the loading checks (default 1800)")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from hub_upload.preflight import run_preflight

    report = run_preflight(args.folder, repo_id=args.repo_id, image=args.image, base_model=args.base_model,
                           max_new_tokens=args.max_new_tokens, timeout=args.timeout)
    print(report.format())
    return 0 if report.passed else 1
