"""transformers' common processor tests (`ProcessorTesterMixin`) on our `LlavaRemoteProcessor`.

Modelled on transformers' `tests/models/llava/test_processing_llava.py`, which builds the built-in processor from a
tiny Hub repo; offline, both targets are built from the same local components instead: CLIP's PIL image processor
and the tests' character-level tokenizer. `LLAVA_COMMON_TESTS_TARGET=builtin` runs the built-in `LlavaProcessor`.
"""

from __future__ import annotations

import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import transformers
from PIL import Image
from transformers import CLIPImageProcessorPil

from processing import LlavaRemoteProcessor
from training_fixtures import tiny_tokenizer
from transformers_common_suite import TARGET, import_suite

_processing_common = import_suite("test_processing_common")
ProcessorTesterMixin = _processing_common.ProcessorTesterMixin

#: The chat template of transformers' llava processor test (images first, `{% generation %}` around answers).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
IMAGE_SIZE, PATCH_SIZE = 30, 6  # the tests' tiny CLIP: 25 patches


class LlavaCommonProcessorTest(ProcessorTesterMixin, unittest.TestCase):
    processor_class = transformers.LlavaProcessor if TARGET == "builtin" else LlavaRemoteProcessor

    @classmethod
    def setUpClass(cls):
        # The chat-template tests load images by URL (the Hub's coco_sample.png); offline, the same kind of image
        # (a 640x480 RGB PNG) comes from a local file instead.
        cls._images_dir = tempfile.TemporaryDirectory()
        paths = []
        for index in range(len(_processing_common.MODALITY_INPUT_DATA["images"])):
            path = Path(cls._images_dir.name) / f"sample_{index}.png"
            pixels = np.random.default_rng(index).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
        cls._local_images = [
            mock.patch.dict(_processing_common.MODALITY_INPUT_DATA, {"images": paths}),
            mock.patch.object(
                _processing_common,
                "url_to_local_path",
                lambda url, **kwargs: paths[0] if url.endswith((".png", ".jpg")) else url,
            ),
        ]
        for patch in cls._local_images:
            patch.start()
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        for patch in cls._local_images:
            patch.stop()
        cls._images_dir.cleanup()

    @classmethod
    def _setup_image_processor(cls):
        return CLIPImageProcessorPil(
            size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        )

    @classmethod
    def _setup_tokenizer(cls):
        return tiny_tokenizer()

    @staticmethod
    def prepare_processor_dict():
        if TARGET == "builtin":
            return {
                "chat_template": CHAT_TEMPLATE,
                "patch_size": PATCH_SIZE,
                "vision_feature_select_strategy": "default",
                "num_additional_image_tokens": 1,
            }
        return {"chat_template": CHAT_TEMPLATE, "image_seq_length": (IMAGE_SIZE // PATCH_SIZE) ** 2}

    # As transformers' llava processor test has them.
    def test_get_num_vision_tokens(self):
        """The helper serving engines (vLLM) use: one count per image."""
        output = self.get_processor()._get_num_multimodal_tokens(image_sizes=[(100, 100), (300, 100), (500, 30)])
        self.assertEqual(len(output["num_image_tokens"]), 3)
        self.assertEqual(len(output["num_image_patches"]), 3)

    def test_chat_template_is_saved(self):
        loaded = self.processor_class.from_pretrained(self.tmpdirname)
        self.assertNotIn("chat_template", loaded.to_dict())
        self.assertEqual(loaded.chat_template, CHAT_TEMPLATE)
