"""`llava chat` and the streaming chat core, on an exported tiny model and real photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data

from conftest import REPO_ROOT
from hub_upload.export import ExportOptions, export_model
from inference.chat import ChatSession
from inference.loading import ChatTemplateError
from inference.loading import load_model_and_processor
from inference.messages import template_stop_string
from inference.settings import GenerationSettings
from share_fixtures import save_tiny_training_output


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for name in ("astronaut", "coffee"):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(paths[name])
    return paths


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("chat")
    return export_model(save_tiny_training_output(work / "run"), work / "tiny-llava")


def chat(model_dir: Path, script: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llava_cli", "chat", "--model", str(model_dir), "--max-new-tokens", "12",
                           "--show-prompt", *extra], input=script, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)


def prompts(stderr: str) -> list[str]:
    return [block.split("--- end of prompt ---")[0] for block in stderr.split("--- prompt ---\n")[1:]]


def answers(stdout: str) -> list[str]:
    return [line[len("ASSISTANT: "):] for line in stdout.splitlines() if line.startswith("ASSISTANT: ")]


def test_conversation_about_real_photos_through_a_pipe(model_dir, photos):
    script = ("What is in this photo?\nWhat is she holding?\n"
              f"/image {photos['coffee']}\nWhat is in this photo?\n/clear\nWhat is in this photo?\n"
              f"/image {photos['coffee']}.missing\n")
    result = chat(model_dir, script, "--image", str(photos["astronaut"]))
    assert result.returncode == 0, result.stderr
    astronaut, follow_up, coffee, coffee_again = answers(result.stdout)
    assert all(a.strip() for a in (astronaut, follow_up, coffee)), (astronaut, follow_up, coffee)
    turn1, turn2, turn3, turn4 = prompts(result.stderr)
    # Two turns about the astronaut, in the model's own template (ChatML here): the photo in the first
    # turn only, and the first turn's question *and answer* carried into the second prompt.
    assert turn1.count("<image>") == 1 and "<|im_start|>user\n<image>\nWhat is in this photo?<|im_end|>" in turn1
    assert turn2.startswith(turn1.rstrip("\n").removesuffix("<|im_start|>assistant"))
    assert f"<|im_start|>assistant\n{astronaut.strip()}<|im_end|>\n<|im_start|>user\nWhat is she holding?" in turn2
    assert turn2.count("<image>") == 1
    # /image starts a new conversation about the new photo; /clear forgets the conversation.
    assert turn3 == turn4 == turn1
    assert "new conversation" in result.stdout and "conversation cleared" in result.stdout
    assert coffee == coffee_again  # greedy decoding: same photo, same prompt, same answer
    assert "cannot open image" in result.stderr and "coffee.png.missing" in result.stderr


def test_template_comes_from_the_models_files_not_its_name(tmp_path, photos):
    # A model called "...chatml..." that was trained with the paper's format chats in the paper's format.
    src = save_tiny_training_output(tmp_path / "run")
    model_dir = export_model(src, tmp_path / "llava-chatml-tiny", ExportOptions(chat_template="paper"))
    model, processor = load_model_and_processor(str(model_dir))
    session = ChatSession(model, processor, GenerationSettings(max_new_tokens=6))
    session.set_image(Image.open(photos["astronaut"]).convert("RGB"))
    prompt = session.prompt_for("What is in this photo?")
    assert "###Human: <image>\nWhat is in this photo?###Assistant:" in prompt and "<|im_start|>" not in prompt
    assert template_stop_string(processor) == "###"
    assert "###" not in "".join(session.ask("What is in this photo?"))
    # Without a template there is no guessing: a clear error naming the missing file.
    (model_dir / "chat_template.jinja").unlink()
    with pytest.raises(ChatTemplateError, match="chat_template.jinja"):
        load_model_and_processor(str(model_dir))


def test_answers_stream_in_pieces_and_stop_at_the_template_marker(model_dir, photos):
    model, processor = load_model_and_processor(str(model_dir))
    assert template_stop_string(processor) == "<|im_end|>"
    session = ChatSession(model, processor, GenerationSettings(max_new_tokens=16))
    session.set_image(Image.open(photos["astronaut"]).convert("RGB"))
    pieces = list(session.ask("What is in this photo?"))
    assert len(pieces) > 1  # streamed, not one block at the end
    assert session.messages[-1]["content"][0]["text"] == "".join(pieces).strip()
    assert "<|im_end|>" not in "".join(pieces)


def test_the_current_image_reaches_the_model(model_dir, photos):
    model, processor = load_model_and_processor(str(model_dir))
    seen = []
    generate = model.generate

    def recording_generate(**kwargs):
        seen.append(kwargs.get("pixel_values"))
        return generate(**kwargs)

    model.generate = recording_generate
    session = ChatSession(model, processor, GenerationSettings(max_new_tokens=2))
    for name in ("astronaut", "coffee"):
        session.set_image(Image.open(photos[name]).convert("RGB"))
        list(session.ask("What is in this photo?"))
        list(session.ask("And then?"))  # a follow-up still sees the image (it is in the first turn)
    session.set_image(None)
    list(session.ask("Hello?"))
    astronaut, astronaut_follow_up, coffee, coffee_follow_up, text_only = seen
    assert astronaut.shape == (1, 3, 30, 30) and torch.equal(astronaut, astronaut_follow_up)
    assert torch.equal(coffee, coffee_follow_up) and not torch.equal(astronaut, coffee)
    assert text_only is None
