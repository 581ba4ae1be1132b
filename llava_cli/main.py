"""`llava SUBCOMMAND ...`: dispatches to the module that owns each task.

Each subcommand lives next to the code it drives and exposes `main(argv) -> int`, which builds its
own argparse/HfArgumentParser parser (so `llava X --help` explains every option). The table below
is imported lazily so that `llava --help` and light subcommands never pay for importing torch.

Errors: a subcommand that fails on bad input or a bad config prints one line, `llava NAME: message`, and exits
with status 1; `llava --debug NAME ...` or `LLAVA_DEBUG=1` shows the full traceback instead. (`--debug` is ours only
before the subcommand: after it, it is the subcommand's, e.g. transformers' `TrainingArguments.debug`.)
"""

from __future__ import annotations

import importlib
import os
import sys

# name -> (module, one-line help). Keep sorted by name.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "answer": ("inference.answer_cli", "Answer a JSONL file of questions with a model (batched, resumable, progress bar)."),
    "build": ("modeling_llava.build_cli", "Assemble a fresh LLaVA from a vision and a language checkpoint."),
    "chat": ("inference.chat_cli", "Chat with a model about an image in the terminal (multi-turn, streamed)."),
    "coco-contexts": ("datagen.coco", "COCO captions + instances -> teacher contexts JSONL (captions and 0-1 boxes)."),
    "convert": ("modeling_llava.convert_cli", "Convert original / llava-hf checkpoints to this project's format and back."),
    "demo": ("demo.main", "Run the offline main job (see the README)."),
    "eval": ("evaluation.cli", "Evaluate as in the paper (§5): judge relative score, ScienceQA, POPE."),
    "expand-captions": ("datagen.instructions", "Stage-1 data: image-caption pairs -> one-turn conversations (Table 8)."),
    "export": ("hub_upload.export_cli", "Export a training output (model, projector or LoRA adapter) to a Hub-ready folder."),
    "filter-captions": ("datagen.caption_filter", "Appendix A: filter a caption set by noun-phrase frequency (+ Fig. 2 plot)."),
    "generate-data": ("datagen.generate", "Generate instruction data with a teacher LLM (conversation/detail/complex)."),
    "mix-data": ("datagen.mix", "Mix generated conversation/detail/complex samples with given proportions."),
    "preflight": ("hub_upload.preflight_cli", "Check that an export folder loads and runs for a Hub user, offline."),
    "push": ("hub_upload.push_cli", "Preflight an export folder, then upload it to the Hugging Face Hub."),
    "serve": ("inference.web_demo", "Serve the visual chat web demo (Gradio) on localhost."),
    "train": ("training.train", "Train LLaVA (stage 1 feature alignment or stage 2 instruction tuning) with TRL."),
    "validate": ("processing.validate", "Check a LLaVA JSON/JSONL dataset (images, turns, lengths) before training."),
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: llava [--debug] SUBCOMMAND [options]   (llava SUBCOMMAND --help for its options)", "",
             "--debug: show the full traceback of an error (or set LLAVA_DEBUG=1)", "", "subcommands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in sorted(SUBCOMMANDS.items())]
    return "\n".join(lines)


DEBUG_FLAG = "--debug"
DEBUG_ENV = "LLAVA_DEBUG"


def _debug_requested() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _error_line(error: BaseException) -> str:
    """The error's message for the user. Errors the user can fix from their message (bad input, bad config, missing
    files) read as they are; anything else is named by its type, with the way to see where it came from."""
    message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever the library wrote
    if isinstance(error, (ValueError, OSError, LookupError)):
        return message
    return f"{type(error).__name__}: {message} (run `llava {DEBUG_FLAG} ...` or set {DEBUG_ENV}=1 for the traceback)"


def run_subcommand(name: str, rest: list[str], debug: bool = False) -> int:
    """Run `llava NAME REST...`: the subcommand's own exit status, or 1 with one line on stderr when it raised."""
    try:
        module = importlib.import_module(SUBCOMMANDS[name][0])
        return int(module.main(rest) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"llava {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        print(f"llava {name}: {_error_line(error)}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug_requested()
    while argv and argv[0] == DEBUG_FLAG:
        debug, argv = True, argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"llava: unknown subcommand {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    return run_subcommand(name, rest, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
