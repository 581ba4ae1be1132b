"""Stage-1 feature cache: same loss as the uncached path, the vision tower runs once per image, keys follow the
tower."""

from __future__ import annotations

import pytest
import torch
import yaml

from conftest import REPO_ROOT, tiny_llava_model
from processing import LlavaProcessor
from processing.llava_data import load_llava_dataset, to_trl_dataset
from training.collators import stage1_collator
from training.feature_cache import attach_feature_cache, vision_fingerprint
from training.train import run
from training.trainer import configure_trainable_parameters
from training_fixtures import caption_records, save_tiny_model, write_dataset, write_images


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("feature_cache")
    paths = write_images(root / "images")
    write_dataset(root / "captions.json", caption_records(paths, repeats=2))
    save_tiny_model(root / "base")
    return root


def test_cached_batch_gives_the_same_loss_and_projector_gradient(workdir, tmp_path):
    model = tiny_llava_model()
    configure_trainable_parameters(model, stage=1)
    processor = LlavaProcessor.from_pretrained(workdir / "base", trust_remote_code=True)
    dataset = to_trl_dataset(load_llava_dataset(workdir / "captions.json", workdir / "images"), workdir / "images")
    collator = stage1_collator(processor, max_length=512)
    cached = attach_feature_cache(collator, model, tmp_path / "cache")
    examples = [dataset[i] for i in range(4)]
    plain_batch, cached_batch = collator(examples), cached(examples)
    assert "pixel_values" not in cached_batch and cached_batch["vision_features"].shape[0] == 4
    losses, gradients = [], []
    for batch in (plain_batch, cached_batch):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        losses.append(loss.item())
        gradients.append(model.model.multi_modal_projector.linear_1.weight.grad.clone())
    assert abs(losses[0] - losses[1]) < 1e-5
    assert torch.allclose(gradients[0], gradients[1], atol=1e-6)
    # the second call reads the cache: the tower is not run again
    model.model.get_vision_features = lambda *a, **k: pytest.fail("the vision tower ran for a cached image")
    again = cached(examples)
    assert torch.equal(again["vision_features"], cached_batch["vision_features"])


def test_fingerprint_changes_with_the_tower_weights():
    model = tiny_llava_model(seed=0)
    other = tiny_llava_model(seed=1)
    assert vision_fingerprint(model) == vision_fingerprint(tiny_llava_model(seed=0))
    assert vision_fingerprint(model) != vision_fingerprint(other)


def test_cached_stage1_run_equals_uncached_run(workdir):
    base = yaml.safe_load((REPO_ROOT / "training" / "configs" / "tiny_stage1.yaml").read_text())
    base.update(model_name_or_path=str(workdir / "base"), data_path=str(workdir / "captions.json"),
                image_root=str(workdir / "images"), max_steps=6)
    plain = run({**base, "output_dir": str(workdir / "plain")})
    cached = run({**base, "output_dir": str(workdir / "cached"), "feature_cache_dir": str(workdir / "cache")})
    assert len(plain.losses) == len(cached.losses) == 6
    assert cached.losses == pytest.approx(plain.losses, abs=1e-5)
    files = list((workdir / "cache").rglob("*.safetensors"))
    assert len(files) == 4  # one per distinct image
