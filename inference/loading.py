"""Loading a model for inference: any folder or Hub id through the Auto classes (remote code), with its
processor, checked to ship the chat template it was trained with."""

from __future__ import annotations

import argparse

MODEL_HELP = "model folder or Hub repo id (loaded with AutoModelForImageTextToText, trust_remote_code=True)"


class ChatTemplateError(ValueError):
    """The model ships no usable chat template."""


def dtype_name(value: str) -> str:
    """The argparse type of `--dtype`: one of `modeling_llava.dtypes.DTYPE_NAMES`.

    Checked when parsed rather than as `choices`, so that building a parser (and `--help`) does not import
    the model package (torch, transformers); the default `auto` needs no check.
    """
    if value == "auto":
        return value
    from modeling_llava.dtypes import DTYPE_NAMES

    if value not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"invalid choice: {value!r} (choose from {', '.join(DTYPE_NAMES)})")
    return value


def add_device_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """--device and --dtype, as every command that loads a model for inference spells them."""
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default="auto", type=dtype_name,
                        help="weights dtype: auto (the default: as saved), float32, bfloat16 or float16")


def load_model_and_processor(model_id: str, device: str | None = None, dtype: str = "auto"):
    """Load a model folder or Hub repo id through the Auto classes (remote code), ready to generate.

    The conversation format is always the chat template shipped with the model (`chat_template.jinja`,
    read by its processor), never one guessed from the model's name.

    Raises:
        ChatTemplateError: the model has no chat template, naming the file it should have.
        ValueError: `dtype` is not one of `modeling_llava.dtypes.DTYPE_NAMES`.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from modeling_llava.dtypes import torch_dtype

    weights_dtype = torch_dtype(dtype)
    try:
        processor = AutoProcessor.from_pretrained(model_id, trust_remote_code=True)
    except OSError as error:  # transformers explains a missing model in a paragraph; its first line says it
        raise OSError(f"cannot load a model from {model_id!r}: {str(error).strip().splitlines()[0]}") from error
    if not getattr(processor, "chat_template", None):
        raise ChatTemplateError(
            f"{model_id} ships no chat template (chat_template.jinja), so the conversation format it was trained "
            "with is unknown; re-export it with `llava export SRC OUT --chat-template NAME_OR_FILE`."
        )
    model = AutoModelForImageTextToText.from_pretrained(model_id, trust_remote_code=True, dtype=weights_dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor
