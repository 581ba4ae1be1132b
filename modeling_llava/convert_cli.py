"""`llava convert`: original LLaVA / llava-hf checkpoints to this project's format, and back to llava-hf."""

from __future__ import annotations

import argparse


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llava convert",
        description="Convert checkpoints. Exactly one of --from/--to. The output folder loads with "
        "AutoModelForImageTextToText.from_pretrained(OUT, trust_remote_code=True) (or, for --to llava-hf, "
        "with transformers' built-in classes).",
    )
    parser.add_argument("src", help="Source folder, or a stage-1 mm_projector.bin/.safetensors with --from original.")
    parser.add_argument("out", help="Output folder (must not exist or be empty).")
    direction = parser.add_mutually_exclusive_group(required=True)
    direction.add_argument(
        "--from", dest="source_format", choices=["original", "llava-hf"],
        help="original: liuhaotian LlavaLlamaForCausalLM (model.mm_projector.*, mm_* config); "
        "llava-hf: transformers' LlavaForConditionalGeneration (v5 or legacy 4.x keys).",
    )
    direction.add_argument("--to", dest="target_format", choices=["llava-hf"], help="Export one of our folders to llava-hf.")
    parser.add_argument(
        "--vision", default=None,
        help="--from original: vision checkpoint for the encoder config/image processor "
        "(default: the checkpoint's mm_vision_tower). Required for a projector-only SRC.",
    )
    parser.add_argument(
        "--chat-template", default="vicuna_v1",
        help="--from original: conversation format the checkpoint was trained with (the original repo's "
        "--conv-mode; not stored in checkpoints): vicuna_v1 (LLaVA-1.5, default), paper (v0), llama2, chatml, plain.",
    )
    parser.add_argument("--language", default=None, help="--from original with a projector-only SRC: the base LLM.")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from pathlib import Path

    from . import convert_checkpoints

    src = Path(args.src)
    if args.target_format == "llava-hf":
        convert_checkpoints.to_llava_hf(src, args.out)
    elif args.source_format == "llava-hf":
        convert_checkpoints.from_llava_hf(src, args.out)
    elif src.is_file():
        if not (args.language and args.vision):
            raise SystemExit("llava convert: a projector-only SRC needs --language and --vision.")
        convert_checkpoints.from_projector(src, args.language, args.vision, args.out, chat_template=args.chat_template)
    else:
        convert_checkpoints.from_original(src, args.out, vision=args.vision, chat_template=args.chat_template)
    print(f"Converted {src} -> {args.out}")
    return 0
