"""Preflight: prove that an export folder works for a Hub user *before* it is uploaded.

Two stages:

1. static checks (`hub_upload.checks`): every required file is present, named in the report;
2. loading checks in a fresh subprocess with an empty `HF_HOME` and `HF_HUB_OFFLINE=1`: the folder
   is placed in the Hub-cache layout (`hub/models--org--name/snapshots/<40-hex>/` + `refs/main`),
   then loaded *by repo id* through AutoConfig, AutoModel, AutoModelForCausalLM,
   AutoModelForImageTextToText and AutoProcessor with `trust_remote_code=True`, and run through
   `pipeline("image-to-text")` and `pipeline("image-text-to-text")` on a real photo.

The subprocess matters: it starts with no already-imported modules, no warm caches and none of
this project's packages importable, which is exactly what a user downloading the repo has.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hub_upload.checks import ADAPTER_CONFIG_FILE, Problem, check_export_folder, is_adapter_folder

_CHILD_SCRIPT = Path(__file__).with_name("_preflight_child.py")
#: Variables that would point the child at the user's real caches, or hand it credentials it does not need.
_SCRUBBED_ENV = (
    "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_MODULES_CACHE", "HF_ASSETS_CACHE",
    "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "PYTHONPATH",
)


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    seconds: float = 0.0
    traceback: str = ""


@dataclass
class PreflightReport:
    """Outcome of a preflight. `passed` is the only thing `llava push` looks at."""

    folder: Path
    repo_id: str
    problems: list[Problem] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    error: str = ""

    @property
    def passed(self) -> bool:
        return not self.problems and not self.error and bool(self.checks) and all(c.ok for c in self.checks)

    def format(self) -> str:
        """Human-readable report, one line per check; failures carry their reason."""
        lines = [f"preflight of {self.folder} as {self.repo_id!r}:"]
        lines += [f"  FAIL  missing/invalid file {p}" for p in self.problems]
        for check in self.checks:
            lines.append(f"  {'ok  ' if check.ok else 'FAIL'}  {check.name} ({check.seconds:.1f}s)"
                         + (f": {check.detail}" if check.detail else ""))
            if not check.ok and check.traceback:
                lines += ["        " + line for line in check.traceback.rstrip().splitlines()[-6:]]
        if self.error:
            lines.append(f"  FAIL  {self.error}")
        lines.append("preflight PASSED" if self.passed else "preflight FAILED")
        return "\n".join(lines)


def default_repo_id(folder: str | Path) -> str:
    """A valid repo id for a folder that has no intended one yet (`local/<folder name>`)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(folder).absolute().name).strip("-.") or "model"
    return f"local/{name[:96]}"


def folder_fingerprint(folder: str | Path) -> str:
    """A 40-hex id of the folder's file names and sizes, used as the snapshot's commit hash."""
    digest = hashlib.sha1()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def place_in_hub_cache(folder: str | Path, hub_cache: str | Path, repo_id: str) -> Path:
    """Expose `folder` as the `main` revision of model `repo_id` in a Hub cache; return the snapshot.

    Files are symlinked, not copied, as the Hub cache itself does (there, into `blobs/`), so this is
    cheap for multi-GB weights.
    """
    folder = Path(folder).absolute()
    repo_dir = Path(hub_cache) / f"models--{repo_id.replace('/', '--')}"
    commit = folder_fingerprint(folder)
    snapshot = repo_dir / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        target = snapshot / path.relative_to(folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(path, target)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


class _PreflightSetupError(RuntimeError):
    """The loading checks cannot start (no base model offline, no photo): the report's `error`."""


def _default_photo(directory: Path) -> Path:
    try:
        from skimage import data
    except ImportError as error:
        raise _PreflightSetupError(
            "preflight needs a photo: install scikit-image (pip install 'llava-transformers[demo]') or pass --image PATH"
        ) from error
    from PIL import Image

    path = directory / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def run_preflight(
    folder: str | Path,
    repo_id: str | None = None,
    image: str | Path | None = None,
    base_model: str | Path | None = None,
    max_new_tokens: int = 4,
    timeout: float = 1800.0,
) -> PreflightReport:
    """Check `folder` statically, then load and run it in a fresh offline subprocess.

    Args:
        folder: an export folder (`llava export` output).
        repo_id: the repo id to load it as (the one it will be pushed to); `local/<name>` if unset.
        image: a photo for the pipeline checks; scikit-image's astronaut if unset.
        base_model: for adapter folders, the local folder of the base model; it is placed in the same
            offline cache under the adapter's `base_model_name_or_path`.
        max_new_tokens: tokens each pipeline check generates.
        timeout: seconds before the loading checks are declared failed.
    """
    folder = Path(folder).absolute()
    repo_id = repo_id or default_repo_id(folder)
    report = PreflightReport(folder=folder, repo_id=repo_id, problems=check_export_folder(folder))
    if report.problems:
        return report  # loading would only fail again, less clearly
    adapter = is_adapter_folder(folder)
    with tempfile.TemporaryDirectory(prefix="llava-preflight-") as tmp:
        tmp_path = Path(tmp)
        hf_home = tmp_path / "hf_home"
        try:
            _stage_offline_cache(folder, hf_home / "hub", repo_id, adapter, base_model)
            photo = Path(image).absolute() if image else _default_photo(tmp_path)
        except _PreflightSetupError as error:
            report.error = str(error)
            return report
        args = {"repo_id": repo_id, "adapter": adapter, "image": str(photo), "max_new_tokens": max_new_tokens}
        _run_child(report, args, tmp_path, hf_home, timeout)
    return report


def _stage_offline_cache(folder: Path, hub_cache: Path, repo_id: str, adapter: bool, base_model) -> None:
    """Put `folder` (and an adapter's base model) where the child's offline Hub cache finds them by repo id."""
    place_in_hub_cache(folder, hub_cache, repo_id)
    if not adapter:
        return
    base_id = json.loads((folder / ADAPTER_CONFIG_FILE).read_text())["base_model_name_or_path"]
    if base_model is not None:
        place_in_hub_cache(base_model, hub_cache, base_id)
    elif not Path(base_id).is_dir():
        raise _PreflightSetupError(f"adapter preflight needs its base model {base_id!r} offline: pass the base "
                                   "model's export folder as --base-model DIR")


def _run_child(report: PreflightReport, args: dict, tmp_path: Path, hf_home: Path, timeout: float) -> None:
    """Run the loading checks in `_preflight_child.py` (fresh, isolated, offline) and put its results in `report`."""
    args_path, report_path = tmp_path / "args.json", tmp_path / "report.json"
    args_path.write_text(json.dumps({**args, "report": str(report_path)}))
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env.update(HF_HOME=str(hf_home), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", TOKENIZERS_PARALLELISM="false")
    try:
        # -I: isolated mode, so neither the current folder nor PYTHONPATH leaks this project's code in.
        proc = subprocess.run(
            [sys.executable, "-I", str(_CHILD_SCRIPT), str(args_path)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        report.error = f"loading checks did not finish within {timeout:.0f}s"
        return
    if report_path.is_file():
        report.checks = [CheckResult(**r) for r in json.loads(report_path.read_text())]
    if proc.returncode != 0 and not report.checks:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        report.error = f"preflight subprocess exited with {proc.returncode}:\n{tail}"
    elif proc.returncode != 0 and all(c.ok for c in report.checks):
        report.error = f"preflight subprocess exited with {proc.returncode}"
