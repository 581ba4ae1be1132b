"""LlavaProcessor: image-token expansion, parity with transformers' built-in LlavaProcessor, the `pad` aspect
mode, CLIP and SigLIP image processors, saving/loading as remote code, padding sides and the pipeline."""

from __future__ import annotations

import ast
import json

import numpy as np
import pytest
import torch
from processing_fixtures import gradient_image, make_processor, smollm2_tokenizer, tiny_clip_image_processor
from transformers import AutoProcessor, CLIPImageProcessorPil, SiglipImageProcessorPil
from transformers import LlavaProcessor as BuiltinLlavaProcessor

from processing import LlavaProcessor
from processing.processing_llava import expand_to_square
from processing.templates import get_chat_template


def _chat(*images, question="What is shown here?"):
    return [{"role": "user", "content": [*({"type": "image", "image": image} for image in images), {"type": "text", "text": question}]}]


def test_matches_builtin_llava_processor_on_clip_l_336_vicuna():
    """Done-when: vicuna_v1 + CLIP-L/336 (pad off): same input_ids and pixel_values as transformers' processor."""
    template = get_chat_template("vicuna_v1")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    ours = LlavaProcessor(image_processor, smollm2_tokenizer(), chat_template=template, image_seq_length=576)
    builtin = BuiltinLlavaProcessor(
        image_processor=image_processor,
        tokenizer=smollm2_tokenizer(),
        chat_template=template,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    images = [gradient_image(500, 375, seed=1), gradient_image(200, 300, seed=2)]
    prompts = [
        ours.apply_chat_template(_chat(images[0]), add_generation_prompt=True),
        ours.apply_chat_template(_chat(images[1], question="Describe it in detail, please."), add_generation_prompt=True),
    ]
    assert prompts[0].endswith("USER: <image>\nWhat is shown here? ASSISTANT:")
    kwargs = dict(return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
    a = ours(images=images, text=prompts, **kwargs)
    b = builtin(images=images, text=prompts, **kwargs)
    assert torch.equal(a["input_ids"], b["input_ids"])
    assert torch.equal(a["attention_mask"], b["attention_mask"])
    assert torch.equal(a["pixel_values"], b["pixel_values"])
    assert a["pixel_values"].shape == (2, 3, 336, 336)
    assert (a["input_ids"] == ours.image_token_id).sum(dim=1).tolist() == [576, 576]

    chat_kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    a = ours.apply_chat_template(_chat(images[0]), **chat_kwargs)
    b = builtin.apply_chat_template(_chat(images[0]), **chat_kwargs)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


def test_expansion_offsets_and_placeholder_count_checks():
    processor = make_processor(template=None, image_seq_length=7)
    out = processor(
        images=[gradient_image(40, 30), gradient_image(30, 40)],
        text=["first <image> then <image>!"],
        return_text_replacement_offsets=True,
    )
    ids = out["input_ids"][0]
    assert ids.count(processor.image_token_id) == 14
    offsets = out["text_replacement_offsets"][0]
    assert [o["span"] for o in offsets] == [(6, 13), (19, 26)]
    assert offsets[1]["new_span"] == (19 + 6 * 7, 19 + 6 * 7 + 7 * 7)
    assert np.asarray(out["pixel_values"]).shape == (2, 3, 30, 30)
    with pytest.raises(ValueError, match="should be the same as the number of images"):
        processor(images=[gradient_image(30, 30)], text=["<image> and <image>"])
    with pytest.raises(ValueError, match="no images were passed"):
        processor(text=["<image> alone"])


def test_image_token_must_be_a_single_token():
    with pytest.raises(ValueError, match="single token"):
        LlavaProcessor(tiny_clip_image_processor(), smollm2_tokenizer(), image_token="<picture>")
    with pytest.raises(ValueError, match="image_aspect_mode"):
        make_processor(image_aspect_mode="stretch")
    with pytest.raises(ValueError, match="image_seq_length"):
        make_processor(image_seq_length=0)


def test_pad_mode_centres_the_image_on_a_mean_coloured_square():
    processor = make_processor(template=None, image_aspect_mode="pad")
    image = gradient_image(60, 30, seed=3)
    background = processor.pad_background
    assert background == tuple(int(m * 255) for m in processor.image_processor.image_mean)
    square = expand_to_square(image, background)
    assert square.size == (60, 60)
    assert square.getpixel((0, 0)) == background and square.getpixel((59, 59)) == background
    assert square.crop((0, 15, 60, 45)).tobytes() == image.tobytes()

    padded = processor(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"]
    expected = processor.image_processor(square, return_tensors="pt")["pixel_values"]
    assert torch.equal(padded, expected)
    resized = make_processor(template=None)(images=[image], text=["<image>"], return_tensors="pt")["pixel_values"]
    assert not torch.equal(padded, resized)
    # The pad band is the mean colour, which normalises to ~0 in every channel (up to the 1/255 truncation).
    assert padded[0, :, 0, :].abs().max() < 0.02


def test_siglip_image_processor_both_modes():
    siglip = SiglipImageProcessorPil(size={"height": 28, "width": 28})
    for mode in ("resize", "pad"):
        processor = make_processor(template="chatml", image_processor=siglip, image_aspect_mode=mode, image_seq_length=4)
        out = processor.apply_chat_template(
            _chat(gradient_image(50, 20)), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        assert out["pixel_values"].shape == (1, 3, 28, 28)
        assert (out["input_ids"] == processor.image_token_id).sum() == 4
    assert processor.pad_background == (127, 127, 127)


def test_left_padding_by_default_right_on_request():
    processor = make_processor(template="paper")
    prompts = [
        processor.apply_chat_template(_chat(gradient_image(30, 30)), add_generation_prompt=True),
        processor.apply_chat_template(_chat(gradient_image(30, 30), question="A much longer question about it?"), add_generation_prompt=True),
    ]
    images = [gradient_image(30, 30), gradient_image(30, 30)]
    left = processor(images=images, text=prompts, padding=True, return_tensors="pt")
    assert left["attention_mask"][0, 0] == 0 and left["attention_mask"][0, -1] == 1
    right = processor(images=images, text=prompts, padding=True, padding_side="right", return_tensors="pt")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0


def test_several_images_anywhere_in_a_turn():
    processor = make_processor(template="vicuna_v1", image_seq_length=3)
    red, blue, green = (gradient_image(30, 30, seed=s) for s in (1, 2, 3))
    chat = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                {"type": "image", "image": red},
                {"type": "text", "text": "with"},
                {"type": "image", "image": blue},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "They differ."}]},
        {"role": "user", "content": [{"type": "image", "image": green}, {"type": "text", "text": "And this?"}]},
    ]
    text = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert "USER: Compare\n<image>\nwith\n<image> ASSISTANT: They differ." in text
    out = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    assert out["pixel_values"].shape[0] == 3
    assert (out["input_ids"] == processor.image_token_id).sum() == 9
    single = [processor.image_processor(image, return_tensors="pt")["pixel_values"][0] for image in (red, blue, green)]
    assert torch.equal(out["pixel_values"], torch.stack(single))


def test_saved_folder_loads_as_remote_code_only(tmp_path):
    processor = make_processor(template="paper", image_aspect_mode="pad", image_seq_length=6)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_llava.LlavaRemoteProcessor"}
    # Not the built-in class name: without trust_remote_code transformers must not fall back to its own LLaVA.
    assert config["processor_class"] == "LlavaRemoteProcessor"
    assert (config["image_seq_length"], config["image_aspect_mode"]) == (6, "pad")

    # The copied file is self-contained: only the standard library, transformers, torch, PIL and numpy.
    tree = ast.parse((tmp_path / "processing_llava.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported <= {"__future__", "typing", "transformers", "torch", "PIL", "numpy"}
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(tree))

    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert type(loaded).__name__ == "LlavaRemoteProcessor" and type(loaded) is not LlavaProcessor
    assert (loaded.image_seq_length, loaded.image_aspect_mode, loaded.chat_template) == (6, "pad", processor.chat_template)
    assert loaded.tokenizer.padding_side == "left"
    image = gradient_image(45, 30)
    chat_kwargs = dict(add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt")
    a = processor.apply_chat_template(_chat(image), **chat_kwargs)
    b = loaded.apply_chat_template(_chat(image), **chat_kwargs)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])

    with pytest.raises(ValueError, match="trust_remote_code=True"):
        AutoProcessor.from_pretrained(tmp_path, trust_remote_code=False)


def test_image_text_to_text_pipeline_with_a_tiny_llava():
    """The pipeline drives our processor end to end (chat input and text + images input).

    Until the project's model is on main this uses transformers' built-in tiny LLaVA, whose vision tower yields
    25 patch features for a 30x30 image with 6x6 patches (CLS dropped): `image_seq_length=25`.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, pipeline

    processor = make_processor(template="vicuna_v1", image_seq_length=25)
    tokenizer = processor.tokenizer
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=30, patch_size=6
        ),
        text_config=LlamaConfig(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        image_token_id=processor.image_token_id,
        vision_feature_layer=-1,
    )
    model = LlavaForConditionalGeneration(config).eval()
    pipe = pipeline("image-text-to-text", model=model, processor=processor)
    chat = [{"role": "user", "content": [{"type": "image", "image": gradient_image(40, 30)}, {"type": "text", "text": "Hi?"}]}]
    out = pipe(text=chat, max_new_tokens=3, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"
    assert isinstance(out[0]["generated_text"][-1]["content"], str)

    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    out = pipe(images=[gradient_image(40, 30)], text=prompt, max_new_tokens=3, do_sample=False, return_full_text=False)
    assert isinstance(out[0]["generated_text"], str) and "<image>" not in out[0]["generated_text"]


def test_pipeline_loads_the_projects_model_and_processor_from_a_folder(tmp_path):
    """A folder with our model and our processor, loaded by repo path with trust_remote_code, generates."""
    from transformers import CLIPVisionConfig, LlamaConfig, pipeline

    from modeling_llava import LlavaConfig, LlavaForCausalLM

    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=30, patch_size=6
    )
    processor = make_processor(template="paper", image_seq_length=25)
    tokenizer = processor.tokenizer
    text = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    config = LlavaConfig(vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=processor.image_token_id)
    assert config.image_seq_length == processor.image_seq_length
    LlavaForCausalLM(config).eval().save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    pipe = pipeline("image-text-to-text", model=str(tmp_path), trust_remote_code=True)
    assert type(pipe.processor).__name__ == "LlavaRemoteProcessor"
    chat = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image", "image": gradient_image(40, 30)}]}]
    out = pipe(text=chat, max_new_tokens=4, do_sample=False)
    assert out[0]["generated_text"][-1]["role"] == "assistant"

    # Batched generation pads on the left, so every prompt ends right where generation starts.
    assert pipe.processor.tokenizer.padding_side == "left"
    batch = pipe(text=[chat, [{**chat[0], "content": chat[0]["content"][::-1]}]], max_new_tokens=2, do_sample=False, batch_size=2)
    assert len(batch) == 2

    # "image-to-text" is redirected to the same task; a prompt with <image> and an image works there too.
    captioner = pipeline("image-to-text", model=str(tmp_path), trust_remote_code=True)
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    out = captioner(images=gradient_image(40, 30), text=prompt, max_new_tokens=3, do_sample=False)
    assert isinstance(out[0]["generated_text"], str)
