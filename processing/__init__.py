"""Processing: the LLaVA processor, chat templates, LLaVA-format datasets and dataset checks.

`LlavaProcessor` is imported on first use, so that light entry points (`llava validate` on text-only checks,
the templates) do not pay for importing transformers.
"""

from __future__ import annotations

from typing import Any


__all__ = ["LlavaProcessor", "LlavaRemoteProcessor"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import processing_llava

        return getattr(processing_llava, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
