"""The dtype names the command line accepts (`--dtype`), and the torch dtype each one means."""

from __future__ import annotations

#: `auto` keeps the checkpoint's own dtype (`from_pretrained(dtype="auto")`).
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


def torch_dtype(name: str):
    """`"auto"` or the `torch.dtype` named `name`; a `ValueError` naming the choices for any other name."""
    import torch

    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPE_NAMES)}; got {name!r}")
    return "auto" if name == "auto" else getattr(torch, name)
