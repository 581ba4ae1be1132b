"""LLaVA model as transformers remote code: `LlavaConfig` and `LlavaForCausalLM`.

`configuration_llava.py` and `modeling_llava.py` are the files shipped to the Hub next to the weights;
the rest of this package (building from parts, conversion) is tooling that loading never needs.
"""

from .configuration_llava import LlavaConfig
from .modeling_llava import LlavaForCausalLM, LlavaModel, LlavaPreTrainedModel

__all__ = ["LlavaConfig", "LlavaForCausalLM", "LlavaModel", "LlavaPreTrainedModel"]
