"""Upload an export folder to the Hugging Face Hub.

The upload itself is `HfApi.upload_folder`. With `hf_xet` installed (a dependency of
huggingface_hub) it streams the files, commits large folders in batches, and is *resumable by
re-running the same call*: files already committed are skipped by their remote id, and data
already sent is deduplicated by the storage backend (~0 bytes re-sent). So a failed `llava push`
tells the user to re-run the same command, rather than us keeping our own resume state. Without
hf_xet it falls back to one `create_commit`, whose LFS pre-upload also skips blobs the Hub has.

The token comes from `HF_TOKEN` or the stored login (`hf auth login`) via
`huggingface_hub.get_token()`; it is handed to `HfApi` and never printed, logged or put in an
error message by this module.
"""

from __future__ import annotations

import glob
import shlex
from dataclasses import dataclass, field
from pathlib import Path

#: Remote weight files that are not in the new folder are deleted in the same upload, so that a
#: re-export with fewer shards does not leave stale shards beside the new index.
STALE_WEIGHT_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json"]


class PushError(RuntimeError):
    """A push that cannot start or did not finish; the message says what to do next."""


@dataclass
class UploadPlan:
    """Everything `llava push` will do, computed offline (this is what `--dry-run` prints)."""

    folder: Path
    repo_id: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (path in repo, size in bytes)
    private: bool = False
    revision: str | None = None
    create_pr: bool = False
    commit_message: str = "Upload LLaVA model with llava push"

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)

    def operations(self) -> list[str]:
        """The Hub operations, in order, one line each."""
        visibility = "private" if self.private else "public"
        target = "a new pull request against main" if self.create_pr else f"branch {self.revision or 'main'!r}"
        ops = [f"create_repo {self.repo_id} (model, {visibility}; kept as is if it already exists)"]
        if self.revision and not self.create_pr and not self.revision.startswith("refs/pr/"):
            ops.append(f"create_branch {self.revision!r} from main (kept as is if it already exists)")
        ops.append(
            f"upload_folder: {len(self.files)} files, {format_size(self.total_bytes)} to {target}, "
            f"commit message {self.commit_message!r}"
        )
        ops.append(f"  in the same upload, delete remote weight files absent here ({', '.join(STALE_WEIGHT_PATTERNS)})")
        return ops

    def format(self) -> str:
        width = max((len(name) for name, _ in self.files), default=0)
        lines = [f"files in {self.folder} ({len(self.files)} files, {format_size(self.total_bytes)}):"]
        lines += [f"  {name.ljust(width)}  {size:>14,d} B  ({format_size(size)})" for name, size in self.files]
        lines.append("planned operations:")
        lines += [f"  {i}. {op}" for i, op in enumerate(self.operations(), 1)]
        return "\n".join(lines)


def format_size(size: int) -> str:
    """Bytes in the largest unit that keeps the number >= 1 (decimal units, as the Hub shows them)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def list_upload_files(folder: str | Path) -> list[tuple[str, int]]:
    """(path in repo, size) of every file `upload_folder` would send, sorted by path."""
    from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
    from huggingface_hub.utils import filter_repo_objects

    folder = Path(folder)
    names = [p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()]
    kept = filter_repo_objects(names, ignore_patterns=DEFAULT_IGNORE_PATTERNS)
    return sorted((name, (folder / name).stat().st_size) for name in kept)


def plan_upload(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    commit_message: str | None = None,
) -> UploadPlan:
    """Validate the options and list what an upload of `folder` to `repo_id` would do. No network.

    Raises:
        PushError: the folder is missing or empty, the repo id is invalid, or options conflict.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise PushError(f"{folder} is not a folder; run `llava export SRC {folder}` first.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(f"invalid --repo-id {repo_id!r}: {error}") from error
    if "/" not in repo_id:
        raise PushError(f"--repo-id must be ORG/NAME or USER/NAME, got {repo_id!r}.")
    if create_pr and revision:
        raise PushError("--create-pr opens a new pull request against main and cannot be combined with --revision "
                        f"{revision!r}; to add to an existing pull request N, pass only --revision refs/pr/N.")
    files = list_upload_files(folder)
    if not files:
        raise PushError(f"{folder} holds no files to upload.")
    plan = UploadPlan(folder=folder, repo_id=repo_id, files=files, private=private, revision=revision,
                      create_pr=create_pr)
    if commit_message:
        plan.commit_message = commit_message
    return plan


def resume_command(plan: UploadPlan) -> str:
    """The command that resumes an interrupted upload of `plan`."""
    args = ["llava", "push", str(plan.folder), "--repo-id", plan.repo_id]
    if plan.private:
        args.append("--private")
    if plan.revision:
        args += ["--revision", plan.revision]
    elif plan.create_pr:
        # A second --create-pr would open a second PR; resuming means pushing to the one already opened.
        args += ["--revision", "refs/pr/<N>"]
    return shlex.join(args).replace("'refs/pr/<N>'", "refs/pr/<N>")


def resolve_token() -> str:
    """The Hub token from `HF_TOKEN` or the stored login. Never print the return value.

    Raises:
        PushError: no token is configured.
    """
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise PushError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, then re-run this command.")
    return token


def push_folder(plan: UploadPlan, token: str) -> str:
    """Create the repo (and branch) and upload the folder. Returns the commit or pull request URL.

    Raises:
        PushError: on any failure, with the command that resumes the upload. The token is never part
            of the message (only the exception's type and the Hub's own message are kept).
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    step = "create_repo"
    try:
        api.create_repo(plan.repo_id, private=plan.private, repo_type="model", exist_ok=True)
        if plan.revision and not plan.create_pr and not plan.revision.startswith("refs/pr/"):
            step = "create_branch"
            api.create_branch(plan.repo_id, branch=plan.revision, exist_ok=True)
        step = "upload_folder"
        commit = api.upload_folder(
            repo_id=plan.repo_id,
            folder_path=plan.folder,
            revision=plan.revision,
            create_pr=plan.create_pr,
            commit_message=plan.commit_message,
            # Exactly the files listed in the plan (escaped: a file name is not a pattern).
            allow_patterns=[glob.escape(name) for name, _ in plan.files],
            delete_patterns=STALE_WEIGHT_PATTERNS,
        )
    except Exception as error:  # noqa: BLE001 - re-raised with the resume instructions
        reason = _scrub(f"{type(error).__name__}: {error}", token)
        raise PushError(
            f"upload to {plan.repo_id} failed during {step}: {reason}\n"
            f"Nothing is lost: re-run `{resume_command(plan)}` to resume; files and data already on the "
            "Hub are skipped."
        ) from None
    return commit.pr_url or commit.commit_url


def _scrub(text: str, token: str) -> str:
    # Belt and braces: the Hub's messages do not echo tokens, but a proxy's might.
    return text.replace(token, "<TOKEN>") if token else text
