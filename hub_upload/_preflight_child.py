"""Preflight worker: load a model by repo id from an offline Hub cache, as a Hub user would.

Run by `hub_upload.preflight` as `python -I _preflight_child.py ARGS.json` in a fresh process with
an empty `HF_HOME` and `HF_HUB_OFFLINE=1`. It must not import this project's packages: it checks
that the folder works *without* them, and blocks them so that remote code that reaches for them
fails here as it would on a user's machine. Writes a JSON report to the path given in the args.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
import time
import traceback

PROJECT_PACKAGES = {"modeling_llava", "processing", "training", "hub_upload", "datagen", "evaluation", "inference", "demo", "llava_cli"}


class _BlockProjectPackages(importlib.abc.MetaPathFinder):
    """Make this project's own packages unimportable (they are installed here, not on the Hub)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in PROJECT_PACKAGES:
            raise ModuleNotFoundError(
                f"No module named {fullname!r} (blocked by preflight: Hub users do not have this project's "
                "packages; remote code may import only torch, transformers and its sibling files)"
            )
        return None


def _is_remote(cls: type) -> bool:
    # transformers imports remote code as modules of the `transformers_modules` package.
    return cls.__module__.startswith("transformers_modules.")


class _Checks:
    """The report: one entry per check, with its outcome, detail and time; a failure never stops the others."""

    def __init__(self):
        self.results: list[dict] = []

    def __call__(self, name: str, fn) -> object:
        start = time.perf_counter()
        try:
            detail = fn()
            self.results.append({"name": name, "ok": True, "detail": str(detail or ""), "seconds": time.perf_counter() - start})
            return detail
        except Exception as error:  # noqa: BLE001 - every failure is reported, none hidden
            self.results.append({
                "name": name,
                "ok": False,
                "detail": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=-6),
                "seconds": time.perf_counter() - start,
            })
            return None

    def set_detail(self, detail: str) -> None:
        self.results[-1]["detail"] = detail


def _require_remote(loaded, what: str) -> None:
    if not _is_remote(type(loaded)):
        raise TypeError(f"{what} loaded the built-in {type(loaded).__name__}, not the remote code")


def _load_remote_model(auto_class, repo_id: str) -> str:
    from transformers import AutoModel

    loaded, info = auto_class.from_pretrained(repo_id, trust_remote_code=True, output_loading_info=True)
    _require_remote(loaded, auto_class.__name__)
    bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    # The bare base model legitimately ignores the checkpoint's lm_head.
    if auto_class is AutoModel and set(bad) == {"unexpected_keys"} and all("lm_head" in k for k in bad["unexpected_keys"]):
        bad = {}
    if bad:
        raise ValueError(f"weights do not match the model: {json.dumps({k: sorted(v)[:8] for k, v in bad.items()})}")
    return f"{type(loaded).__module__.rsplit('.', 1)[-1]}.{type(loaded).__name__}"


def _load_config(repo_id: str) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(repo_id, trust_remote_code=True)
    _require_remote(config, "AutoConfig")
    return f"{type(config).__name__} (model_type={config.model_type!r})"


def _load_processor(processor_id: str):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(processor_id, trust_remote_code=True)
    _require_remote(processor, "AutoProcessor")
    if not getattr(processor, "chat_template", None):
        raise ValueError("the processor has no chat template")
    return processor


def _check_model(checks: _Checks, repo_id: str) -> str:
    """A model repo: its config and the three Auto model classes load the remote code with matching weights."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

    checks("AutoConfig", lambda: _load_config(repo_id))
    for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
        checks(auto_class.__name__, lambda auto_class=auto_class: _load_remote_model(auto_class, repo_id))
    return repo_id  # the pipelines load it by repo id, exactly as a user's `pipeline(task, model=repo_id)` does


def _check_adapter(checks: _Checks, repo_id: str) -> tuple[object, str]:
    """An adapter repo holds only the adapter: the model and processor come from its base model's repo."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText

    base_id = PeftConfig.from_pretrained(repo_id).base_model_name_or_path

    def load_adapter():
        return PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_id, trust_remote_code=True), repo_id)

    model = checks("PeftModel.from_pretrained", load_adapter)
    if model is not None:
        checks.set_detail(f"PeftModel on {base_id} ({type(model.base_model.model).__name__})")
    return model, base_id


def _generated_text(out) -> str:
    text = out[0]["generated_text"]
    if not isinstance(text, str):
        raise TypeError(f"expected generated text, got {out!r}")
    return repr(text[-120:])


def _check_pipelines(checks: _Checks, model, processor, image, max_new_tokens: int, adapter: bool) -> None:
    from transformers import pipeline

    generate_kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
    pipe_kwargs = {"processor": processor} if adapter else {}
    prompt = f"{processor.image_token}\nDescribe this photo."
    messages = [{"role": "user", "content": [
        {"type": "image", "image": image},
        {"type": "text", "text": "What is in this picture?"},
    ]}]

    def image_to_text():
        pipe = pipeline("image-to-text", model=model, trust_remote_code=True, **pipe_kwargs)
        return _generated_text(pipe(images=image, text=prompt, generate_kwargs=generate_kwargs, return_full_text=False))

    def image_text_to_text():
        pipe = pipeline("image-text-to-text", model=model, trust_remote_code=True, **pipe_kwargs)
        return _generated_text(pipe(text=messages, generate_kwargs=generate_kwargs, return_full_text=False))

    checks('pipeline("image-to-text")', image_to_text)
    checks('pipeline("image-text-to-text")', image_text_to_text)


def main(args_path: str) -> int:
    sys.meta_path.insert(0, _BlockProjectPackages())
    args = json.loads(open(args_path, encoding="utf-8").read())
    repo_id, adapter = args["repo_id"], args["adapter"]
    checks = _Checks()

    import torch
    from PIL import Image

    torch.manual_seed(0)
    image = Image.open(args["image"]).convert("RGB")
    model, model_id = _check_adapter(checks, repo_id) if adapter else (_check_model(checks, repo_id), repo_id)
    processor = checks("AutoProcessor", lambda: _load_processor(model_id))
    if processor is not None and model is not None:
        checks.set_detail(type(processor).__name__ + (f" (from {model_id})" if adapter else ""))
        _check_pipelines(checks, model, processor, image, args["max_new_tokens"], adapter)

    with open(args["report"], "w", encoding="utf-8") as handle:
        json.dump(checks.results, handle, indent=2)
    return 0 if all(r["ok"] for r in checks.results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
