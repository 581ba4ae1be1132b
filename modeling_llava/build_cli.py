"""`llava build`: assemble a fresh LLaVA from a vision checkpoint and a language checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="llava build",
        description="Assemble a new LLaVA (paper §4.1) from a CLIP/SigLIP checkpoint and a causal LM, with a "
        "freshly initialised projector, and save it (weights, remote code, processor) into OUT.",
    )
    parser.add_argument("out", help="Output folder (must not exist or be empty).")
    parser.add_argument("--vision", required=True, help="Vision checkpoint: Hub id or folder (e.g. openai/clip-vit-large-patch14).")
    parser.add_argument(
        "--language", required=True, help="Causal-LM checkpoint: Hub id, folder, or a .gguf file (e.g. lmsys/vicuna-7b-v1.5)."
    )
    parser.add_argument(
        "--projector-type", default="linear",
        help="linear (the paper's W), mlp2x_gelu (LLaVA-1.5), mlp<N>x_gelu, or identity. Default: linear.",
    )
    parser.add_argument(
        "--projector-init", choices=["normal", "embedding_mean"], default="normal",
        help="normal: N(0, initializer_range) weights, zero bias (the paper). embedding_mean: same weights, last "
        "bias = the LLM's mean word embedding, so image tokens start where the LLM expects words (faster stage 1).",
    )
    parser.add_argument(
        "--vision-feature-layer", type=int, nargs="+", default=[-2],
        help="Vision hidden state(s) used as features; several are concatenated. Default: -2 (before the last layer).",
    )
    parser.add_argument(
        "--vision-feature-select-strategy", choices=["default", "full"], default="default",
        help="default: drop the CLS token; full: keep it (transformers' names for LLaVA's patch / cls_patch).",
    )
    parser.add_argument(
        "--chat-template", default=None,
        help="Template name (paper, vicuna_v1, llama2, plain, chatml, own) or a .jinja file. Default: the LLM's own.",
    )
    parser.add_argument("--image-aspect-mode", choices=["resize", "pad"], default="resize",
                        help="resize: the image processor's resize/crop (default); pad: square canvas (LLaVA-1.5).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                        help="Dtype to load and save in. Default: the checkpoints' own.")
    return parser.parse_args(argv)


def _refuse_text_only_template(chat_template: str, args: argparse.Namespace) -> None:
    """Refuse a `--chat-template` that cannot render image content, before any weights are loaded."""
    from transformers import AutoTokenizer

    from processing.templates import image_content_problem, list_chat_templates, resolve_chat_template

    from .build import split_gguf_path

    folder, gguf_file = split_gguf_path(args.language)
    tokenizer = AutoTokenizer.from_pretrained(folder, **({"gguf_file": gguf_file} if gguf_file else {}))
    problem = image_content_problem(resolve_chat_template(chat_template, tokenizer), tokenizer)
    if problem is not None:
        raise ValueError(
            f"--chat-template {args.chat_template}: the template cannot render image content: {problem}. Pass an "
            f"image-aware one ({', '.join(list_chat_templates())}) or leave it unset for the language model's own "
            "format made image-aware."
        )


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    import torch

    from .build import build_llava
    from processing.files import atomic_output_dir

    layer = args.vision_feature_layer[0] if len(args.vision_feature_layer) == 1 else args.vision_feature_layer
    chat_template = args.chat_template
    if chat_template is not None and chat_template.endswith(".jinja"):
        chat_template = Path(chat_template).read_text(encoding="utf-8")
    if chat_template is not None:
        _refuse_text_only_template(chat_template, args)
    model, processor = build_llava(
        args.vision,
        args.language,
        projector_type=args.projector_type,
        projector_init=args.projector_init,
        vision_feature_layer=layer,
        vision_feature_select_strategy=args.vision_feature_select_strategy,
        chat_template=chat_template,
        image_aspect_mode=args.image_aspect_mode,
        dtype=getattr(torch, args.dtype) if args.dtype else None,
    )
    with atomic_output_dir(args.out) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    params = sum(p.numel() for p in model.parameters())
    print(f"Saved LLaVA ({params / 1e6:.1f}M parameters, {model.config.image_seq_length} image tokens) to {args.out}")
    return 0
