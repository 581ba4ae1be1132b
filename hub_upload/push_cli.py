"""`llava push OUT --repo-id ORG/NAME`: preflight an export folder, then upload it to the Hub."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava push",
        description=(
            "Upload an export folder to the Hugging Face Hub. The folder is preflighted first (see `llava "
            "preflight --help`) and refused if that fails. The token comes from HF_TOKEN or the stored login "
            "(`hf auth login`) and is never printed. An interrupted upload resumes when the same command is re-run."
        ),
    )
    parser.add_argument("folder", help="export folder (the OUT of `llava export SRC OUT`)")
    parser.add_argument("--repo-id", required=True, help="target model repository, ORG/NAME or USER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository as private (if it is new)")
    parser.add_argument("--create-pr", action="store_true",
                        help="open a pull request against main instead of committing to it")
    parser.add_argument("--revision", default=None,
                        help="branch to commit to (created from main if missing), or refs/pr/N to add to pull request N")
    parser.add_argument("--commit-message", default=None, help="commit message (default: 'Upload LLaVA model with llava push')")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the exact files, sizes and planned Hub operations, run the preflight, send nothing")
    parser.add_argument("--image", default=None, help="photo for the preflight pipeline checks (default: astronaut)")
    parser.add_argument("--base-model", default=None, help="adapter folders only: local folder of the base model, for preflight")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed for the preflight loading checks")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from hub_upload.preflight import run_preflight
    from hub_upload.push import PushError, plan_upload, push_folder, resolve_token

    try:
        plan = plan_upload(args.folder, args.repo_id, private=args.private, revision=args.revision,
                           create_pr=args.create_pr, commit_message=args.commit_message)
    except PushError as error:
        print(f"llava push: {error}", file=sys.stderr)
        return 2
    print(plan.format())
    try:
        # Before the (slow) preflight: a missing login should not cost a model load to find out.
        token = None if args.dry_run else resolve_token()
    except PushError as error:
        print(f"llava push: {error}", file=sys.stderr)
        return 1
    report = run_preflight(plan.folder, repo_id=plan.repo_id, image=args.image, base_model=args.base_model,
                           timeout=args.timeout)
    print(report.format())
    if not report.passed:
        print(f"llava push: refusing to upload {plan.folder}: it failed preflight (see above).", file=sys.stderr)
        return 1
    if args.dry_run:
        print("dry run: nothing was sent to the Hub.")
        return 0
    try:
        url = push_folder(plan, token)
    except PushError as error:
        print(f"llava push: {error}", file=sys.stderr)
        return 1
    print(f"uploaded: {url}")
    return 0
