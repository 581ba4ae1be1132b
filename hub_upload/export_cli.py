"""`llava export SRC OUT`: turn a training output into a Hub-ready folder."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llava export",
        description=(
            "Export a training output to a Hub-ready folder: sharded safetensors + index, config.json with a "
            "complete auto_map, the remote-code .py files, processor files + chat_template.jinja, "
            "generation_config.json and a README.md model card. SRC is a model folder (save_pretrained output or "
            "TRL checkpoint), a stage-1 projector .safetensors file (needs --base-model), or a PEFT LoRA adapter "
            "folder (exported as an adapter, or merged with --merge). OUT appears only when complete."
        ),
    )
    parser.add_argument("src", help="training output: model folder, projector .safetensors, or adapter folder")
    parser.add_argument("out", help="export folder to create")
    parser.add_argument("--base-model", default=None,
                        help="LLaVA model folder the projector / adapter was trained on (projector sources, --merge)")
    parser.add_argument("--base-model-repo-id", default=None,
                        help="adapters: Hub id of the base model, written as the adapter's base_model_name_or_path")
    parser.add_argument("--merge", action="store_true", help="adapters: merge into --base-model and export a full model")
    parser.add_argument("--processor", default=None, help="folder to take the processor from (default: SRC, then --base-model)")
    parser.add_argument("--chat-template", default=None,
                        help="chat template (a .jinja file or a template name) to ship instead of the processor's own")
    parser.add_argument("--max-shard-size", default="5GB", help="largest weight shard, e.g. 5GB, 500MB (default 5GB)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                        help="dtype of the exported weights (default: as trained)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists (only once the new export is complete)")
    parser.add_argument("--repo-id", default=None, help="intended Hub repo id (used in the card's usage snippet and name)")
    parser.add_argument("--model-name", default=None, help="name in the card (default: from --repo-id or OUT)")
    parser.add_argument("--base-model-id", action="append", default=[], metavar="ID",
                        help="card base_model entry (repeatable; default: the vision and language checkpoints the model was built from)")
    parser.add_argument("--dataset", action="append", default=[], metavar="ID", help="card datasets entry (repeatable)")
    parser.add_argument("--license", default=None, help="card license, e.g. apache-2.0, llama2")
    parser.add_argument("--language", action="append", default=[], help="card language entry (repeatable), e.g. en")
    parser.add_argument("--tag", action="append", default=[], help="extra card tag (repeatable)")
    parser.add_argument("--metrics", action="append", default=[], metavar="PATH",
                        help="metrics.json of an evaluation (repeatable); its numbers go into the card's model-index")
    parser.add_argument("--llava-hf-out", default=None, metavar="DIR",
                        help="also write the model in the llava-hf format (transformers' built-in LlavaForConditionalGeneration) to DIR")
    parser.add_argument("--preflight", action="store_true", help="run `llava preflight OUT` after exporting")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from hub_upload.export import ExportError, ExportOptions, export_model

    options = ExportOptions(
        base_model=args.base_model, base_model_repo_id=args.base_model_repo_id, merge=args.merge,
        processor=args.processor, chat_template=args.chat_template, max_shard_size=args.max_shard_size,
        dtype=args.dtype, overwrite=args.overwrite, model_name=args.model_name, repo_id=args.repo_id,
        base_model_ids=args.base_model_id, datasets=args.dataset, license=args.license, language=args.language,
        tags=args.tag, metrics=args.metrics,
    )
    try:
        out = export_model(args.src, args.out, options)
    except (ExportError, FileExistsError) as error:
        print(f"llava export: {error}", file=sys.stderr)
        return 1
    from hub_upload.push import format_size, list_upload_files

    files = list_upload_files(out)
    print(f"exported {args.src} -> {out} ({len(files)} files, {format_size(sum(s for _, s in files))})")
    for name, size in files:
        print(f"  {name}  ({format_size(size)})")
    if args.llava_hf_out:
        from modeling_llava.convert_checkpoints import to_llava_hf

        if (out / "adapter_config.json").is_file():
            print("llava export: --llava-hf-out needs a full model; merge the adapter with --merge.", file=sys.stderr)
            return 1
        to_llava_hf(out, args.llava_hf_out)  # atomic, like the export itself
        print(f"llava-hf format -> {args.llava_hf_out}")
    if args.preflight:
        from hub_upload.preflight import run_preflight

        report = run_preflight(out, repo_id=args.repo_id)
        print(report.format())
        return 0 if report.passed else 1
    return 0
