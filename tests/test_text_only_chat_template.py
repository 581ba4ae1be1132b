"""A processor carrying its language model's own text-only chat template (as a llava-hf checkpoint built on a
ChatML LLM often does): `llava validate --processor` says so in one line with the fix, `llava convert --from
llava-hf` and `llava build` give the processor an image-aware template instead."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import LlavaConfig as HFLlavaConfig
from transformers import LlavaForConditionalGeneration
from transformers import LlavaProcessor as HFLlavaProcessor

from conftest import TINY_IMAGE_TOKEN_ID, tiny_text_config, tiny_vision_config
from llava_cli.main import main as llava
from training_fixtures import tiny_processor, tiny_tokenizer

# The shape of SmolLM2's (and most ChatML LLMs') own template: content concatenated as a string.
TEXT_ONLY_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' "
    "+ '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SAMPLE = '{"id": "s1", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\\nWhat?"}, ' \
         '{"from": "gpt", "value": "A square."}]}\n'


def _dataset(root):
    Image.new("RGB", (30, 30)).save(root / "a.png")
    (root / "data.jsonl").write_text(SAMPLE)
    return root / "data.jsonl"


def test_validate_with_a_text_only_template_says_why_and_how_to_fix(tmp_path, capsys):
    processor = tiny_processor()
    processor.chat_template = TEXT_ONLY_CHATML
    processor.save_pretrained(tmp_path / "proc")
    data = _dataset(tmp_path)
    status = llava(["validate", str(data), "--image-root", str(tmp_path), "--processor", str(tmp_path / "proc"),
                    "--max-length", "512"])
    err = capsys.readouterr().err.strip()
    assert status == 1 and "\n" not in err and "Traceback" not in err
    assert "cannot render image content" in err and "--chat-template own" in err


def test_convert_from_llava_hf_gives_the_processor_an_image_aware_template(tmp_path, capsys):
    from processing.templates import image_content_problem

    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TEXT_ONLY_CHATML
    assert image_content_problem(TEXT_ONLY_CHATML, tokenizer) is not None
    torch.manual_seed(0)
    hf_config = HFLlavaConfig(
        vision_config=tiny_vision_config().to_dict(), text_config=tiny_text_config().to_dict(),
        image_token_index=TINY_IMAGE_TOKEN_ID, projector_hidden_act="gelu",
    )
    LlavaForConditionalGeneration(hf_config).save_pretrained(tmp_path / "hf")
    HFLlavaProcessor(image_processor=tiny_processor().image_processor, tokenizer=tokenizer, patch_size=6,
                     vision_feature_select_strategy="default", num_additional_image_tokens=1,
                     ).save_pretrained(tmp_path / "hf")
    assert llava(["convert", str(tmp_path / "hf"), str(tmp_path / "ours"), "--from", "llava-hf"]) == 0
    data = _dataset(tmp_path)
    assert llava(["validate", str(data), "--image-root", str(tmp_path), "--processor", str(tmp_path / "ours"),
                  "--max-length", "512"]) == 0
    assert "no problems found" in capsys.readouterr().out
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tmp_path / "ours", trust_remote_code=True)
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}], tokenize=False,
        add_generation_prompt=True,
    )
    assert rendered.startswith("<|im_start|>user\n<image>") and rendered.endswith("<|im_start|>assistant\n")


@pytest.fixture
def parts(tmp_path):
    """A tiny CLIP folder and a tiny Llama folder whose tokenizer carries a text-only ChatML template."""
    from transformers import CLIPVisionModel, LlamaForCausalLM

    CLIPVisionModel(tiny_vision_config()).save_pretrained(tmp_path / "clip")
    tiny_processor().image_processor.save_pretrained(tmp_path / "clip")
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TEXT_ONLY_CHATML
    LlamaForCausalLM(tiny_text_config()).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    (tmp_path / "text_only.jinja").write_text(TEXT_ONLY_CHATML)
    return tmp_path


def test_build_refuses_a_text_only_template_and_by_default_makes_the_llms_own_image_aware(parts, capsys):
    common = ["--vision", str(parts / "clip"), "--language", str(parts / "llm")]
    status = llava(["build", str(parts / "refused"), *common, "--chat-template", str(parts / "text_only.jinja")])
    err = capsys.readouterr().err.strip()
    assert status == 1 and err.startswith("llava build: --chat-template") and "\n" not in err  # before any loading
    assert "cannot render image content" in err and not (parts / "refused").exists()
    assert llava(["build", str(parts / "built"), *common]) == 0
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(parts / "built", trust_remote_code=True)
    rendered = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}], tokenize=False)
    assert rendered.startswith("<|im_start|>user\n<image>")
