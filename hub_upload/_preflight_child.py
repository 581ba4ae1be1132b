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

PROJECT_PACKAGES = {"modeling_llava", "processing", "training", "hub_upload", "datagen", "evaluation", "llava_cli"}


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


def main(args_path: str) -> int:
    sys.meta_path.insert(0, _BlockProjectPackages())
    args = json.loads(open(args_path, encoding="utf-8").read())
    repo_id, adapter = args["repo_id"], args["adapter"]
    results: list[dict] = []

    def check(name: str, fn) -> object:
        start = time.perf_counter()
        try:
            detail = fn()
            results.append({"name": name, "ok": True, "detail": str(detail or ""), "seconds": time.perf_counter() - start})
            return detail
        except Exception as error:  # noqa: BLE001 - every failure is reported, none hidden
            results.append({
                "name": name,
                "ok": False,
                "detail": f"{type(error).__name__}: {error}",
                "traceback": traceback.format_exc(limit=-6),
                "seconds": time.perf_counter() - start,
            })
            return None

    import torch
    from PIL import Image
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForImageTextToText,
        AutoProcessor,
        pipeline,
    )

    torch.manual_seed(0)
    image = Image.open(args["image"]).convert("RGB")
    generate_kwargs = {"max_new_tokens": args["max_new_tokens"], "do_sample": False}

    def load_remote(auto_class):
        def load():
            loaded, info = auto_class.from_pretrained(repo_id, trust_remote_code=True, output_loading_info=True)
            if not _is_remote(type(loaded)):
                raise TypeError(f"{auto_class.__name__} loaded the built-in {type(loaded).__name__}, not the remote code")
            bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
            # The bare base model legitimately ignores the checkpoint's lm_head.
            if auto_class is AutoModel and set(bad) == {"unexpected_keys"} and all("lm_head" in k for k in bad["unexpected_keys"]):
                bad = {}
            if bad:
                raise ValueError(f"weights do not match the model: {json.dumps({k: sorted(v)[:8] for k, v in bad.items()})}")
            return f"{type(loaded).__module__.rsplit('.', 1)[-1]}.{type(loaded).__name__}"
        return load

    def load_config():
        config = AutoConfig.from_pretrained(repo_id, trust_remote_code=True)
        if not _is_remote(type(config)):
            raise TypeError(f"AutoConfig loaded the built-in {type(config).__name__}, not the remote code")
        return f"{type(config).__name__} (model_type={config.model_type!r})"

    def load_processor(processor_id):
        processor = AutoProcessor.from_pretrained(processor_id, trust_remote_code=True)
        if not _is_remote(type(processor)):
            raise TypeError(f"AutoProcessor loaded the built-in {type(processor).__name__}, not the remote code")
        if not getattr(processor, "chat_template", None):
            raise ValueError("the processor has no chat template")
        return processor

    # An adapter repo holds only the adapter: the model and processor come from its base model's repo.
    model_id = repo_id
    if adapter:
        from peft import PeftConfig, PeftModel

        model_id = PeftConfig.from_pretrained(repo_id).base_model_name_or_path

        def load_adapter():
            base = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True)
            model = PeftModel.from_pretrained(base, repo_id)
            return model

        model = check("PeftModel.from_pretrained", load_adapter)
        if model is not None:
            results[-1]["detail"] = f"PeftModel on {model_id} ({type(model.base_model.model).__name__})"
    else:
        model = repo_id
        check("AutoConfig", load_config)
        for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText):
            check(auto_class.__name__, load_remote(auto_class))
    processor = check("AutoProcessor", lambda: load_processor(model_id))
    if processor is not None and model is not None:
        results[-1]["detail"] = type(processor).__name__ + (f" (from {model_id})" if adapter else "")
        prompt = f"{processor.image_token}\nDescribe this photo."
        # A model repo goes through the pipeline exactly as a user's `pipeline(task, model=repo_id)` does.
        pipe_kwargs = {"processor": processor} if adapter else {}

        def image_to_text():
            pipe = pipeline("image-to-text", model=model, trust_remote_code=True, **pipe_kwargs)
            out = pipe(images=image, text=prompt, generate_kwargs=generate_kwargs, return_full_text=False)
            text = out[0]["generated_text"]
            if not isinstance(text, str):
                raise TypeError(f"expected generated text, got {out!r}")
            return repr(text[-120:])

        def image_text_to_text():
            pipe = pipeline("image-text-to-text", model=model, trust_remote_code=True, **pipe_kwargs)
            messages = [{"role": "user", "content": [
                {"type": "image", "image": image},
                {"type": "text", "text": "What is in this picture?"},
            ]}]
            out = pipe(text=messages, generate_kwargs=generate_kwargs, return_full_text=False)
            text = out[0]["generated_text"]
            if not isinstance(text, str):
                raise TypeError(f"expected generated text, got {out!r}")
            return repr(text[-120:])

        check('pipeline("image-to-text")', image_to_text)
        check('pipeline("image-text-to-text")', image_text_to_text)

    with open(args["report"], "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
