"""The lmms-eval plugin: registration (legacy registry and the entry-point manifest), model
construction from `--model_args`, one `generate_until` and one `loglikelihood` call on a tiny model.

lmms-eval is an optional dependency (the `eval` extra; it is not in `dev` because it pulls
torchvision and many task libraries): without it these tests are skipped, and say so.
"""

from __future__ import annotations

import pytest
from PIL import Image

pytest.importorskip("lmms_eval", reason="lmms-eval is not installed (pip install .[eval])")

from lmms_eval.api.instance import Instance  # noqa: E402
from lmms_eval.api.registry import get_model  # noqa: E402
from lmms_eval.models.registry_v2 import ModelRegistryV2  # noqa: E402

from inference.batch import BatchAnswerer  # noqa: E402
from inference.messages import build_messages  # noqa: E402
from inference.settings import GenerationSettings  # noqa: E402
from evaluation.lmms_eval_plugin import LlavaRemoteLmms, manifest  # noqa: E402
from evaluation_fixtures import save_tiny_image_text_model  # noqa: E402

IMAGES = [Image.new("RGB", (30, 30), (200, 30, 30)), Image.new("RGB", (40, 30), (10, 200, 90))]
DOCS = [
    {"question": "what is in the image ?", "image": IMAGES[0]},
    {"question": "which animal is shown ?", "image": IMAGES[1]},
    {"question": "is there a cat ?", "image": None},
]


def _doc_to_visual(doc):
    return [doc["image"]] if doc["image"] is not None else []


def _request(kind, index, arguments):
    return Instance(
        request_type=kind, arguments=arguments, idx=0, metadata={"task": "toy", "doc_id": index, "repeats": 1}
    )


@pytest.fixture(scope="module")
def lmms_model(tmp_path_factory):
    folder = save_tiny_image_text_model(tmp_path_factory.mktemp("tiny") / "model")
    model = LlavaRemoteLmms.create_from_arg_string(
        f"pretrained={folder},device=cpu,dtype=float32,batch_size=2,max_new_tokens=4"
    )
    model.task_dict = {"toy": {"test": DOCS}}
    return model


def test_registration():
    assert get_model("llava_remote") is LlavaRemoteLmms  # legacy registry, filled on import
    registry = ModelRegistryV2()
    registry.register_manifest(manifest())  # exactly what lmms-eval does with our entry point's payload
    assert registry.get_model_class("llava_remote") is LlavaRemoteLmms


def test_construction_rejects_unknown_args(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model_args \['colour'\]"):
        LlavaRemoteLmms(pretrained=str(tmp_path), colour="blue")


def test_generate_until_matches_our_answerer(lmms_model):
    requests = [
        _request(
            "generate_until",
            i,
            (doc["question"], {"max_new_tokens": 4, "until": ["\n\n"]}, _doc_to_visual, i, "toy", "test"),
        )
        for i, doc in enumerate(DOCS)
    ]
    outputs = lmms_model.generate_until(requests)
    assert len(outputs) == 3 and all(isinstance(o, str) and o for o in outputs)
    # The same questions through our own answerer, one at a time, give the same answers.
    answerer = BatchAnswerer(
        lmms_model.answerer.model, lmms_model.answerer.processor, GenerationSettings(max_new_tokens=4)
    )
    for doc, output in zip(DOCS, outputs):
        images = _doc_to_visual(doc)
        assert answerer([build_messages(doc["question"], len(images))], images or None) == [output]
    # `until` cuts the answer: stopping at the first answer's second word leaves only its first.
    first_word, second_word = outputs[0].split()[:2]
    cut = lmms_model.generate_until(
        [
            _request(
                "generate_until",
                0,
                (
                    DOCS[0]["question"],
                    {"max_new_tokens": 4, "until": [" " + second_word]},
                    _doc_to_visual,
                    0,
                    "toy",
                    "test",
                ),
            )
        ]
    )
    assert cut == [first_word]


def test_loglikelihood_of_the_greedy_continuation(lmms_model):
    greedy = lmms_model.generate_until(
        [_request("generate_until", 0, (DOCS[0]["question"], {"max_new_tokens": 2}, _doc_to_visual, 0, "toy", "test"))]
    )[0]
    other = " yes no" if greedy != "yes no" else " no yes"
    results = lmms_model.loglikelihood(
        [
            _request("loglikelihood", 0, (DOCS[0]["question"], " " + greedy, _doc_to_visual, 0, "toy", "test")),
            _request("loglikelihood", 0, (DOCS[0]["question"], other, _doc_to_visual, 0, "toy", "test")),
        ]
    )
    (greedy_logprob, greedy_flag), (other_logprob, other_flag) = results
    assert greedy_flag is True and other_flag is False
    assert greedy_logprob < 0 and other_logprob < 0


def test_the_guides_command_line_arguments_construct_the_model(tmp_path):
    # lmms-eval's evaluator calls exactly this: `--model_args` plus its own --batch_size/--max_batch_size/--device.
    from lmms_eval import models

    folder = save_tiny_image_text_model(tmp_path / "model")
    model_class = models.get_model("llava_remote")
    model = model_class.create_from_arg_string(
        f"pretrained={folder},batch_size=8", {"batch_size": 1, "max_batch_size": None, "device": "cpu"}
    )
    assert model.batch_size == 8  # --model_args wins over lmms-eval's default --batch_size
    model = model_class.create_from_arg_string(f"pretrained={folder}", {"batch_size": "3", "device": "cpu"})
    assert model.batch_size == 3
