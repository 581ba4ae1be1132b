"""Processing: the LLaVA processor, chat templates, LLaVA-format datasets and dataset checks."""

from .processing_llava import LlavaProcessor, LlavaRemoteProcessor

__all__ = ["LlavaProcessor", "LlavaRemoteProcessor"]
