"""Stage-1 vision feature cache: run the frozen vision tower once per image, not once per image per epoch.

In stage 1 the vision tower is frozen, so its output for an image never changes. The cache stores each image's
selected vision features (the input of the projector) in a safetensors file, memory-mapped when read, and the
collator hands them to the model as `vision_features=` instead of `pixel_values=`; the projector and the LLM run
exactly as before, so the loss is the same.

The model's image-feature API is all the cache uses: `LlavaForCausalLM.get_vision_features(pixel_values)` computes
the features, `vision_feature_dependencies()` says what else they depend on. Keys: a hash of the image *as the
model sees it* (the preprocessed `pixel_values`, so a change of image processor settings or of the image file
gives a new key) inside a folder named by a hash of those dependencies (vision config, feature layer(s), select
strategy, dtype, and the tower's weights). A cache can therefore be shared by runs and never serves features of
another tower.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.feature_extraction_utils import BatchFeature

from processing.files import atomic_output_file


FEATURES_KEY = "vision_features"


def vision_fingerprint(model) -> str:
    """A hash of everything that determines the vision features (`model.vision_feature_dependencies()`)."""
    settings, weights = model.vision_feature_dependencies()
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in sorted(weights.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def image_key(pixel_values: torch.Tensor) -> str:
    """A hash of one preprocessed image `(channels, height, width)`."""
    data = pixel_values.detach().cpu().contiguous()
    digest = hashlib.sha256(str((tuple(data.shape), str(data.dtype))).encode())
    digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FeatureCache:
    """Vision features on disk, one safetensors file per image under `directory/<vision fingerprint>/`."""

    def __init__(self, directory: str | os.PathLike, fingerprint: str):
        self.root = Path(directory) / fingerprint
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> torch.Tensor:
        with safe_open(str(self.path(key)), framework="pt") as handle:  # memory-mapped read
            return handle.get_tensor(FEATURES_KEY)

    def put(self, key: str, features: torch.Tensor) -> None:
        path = self.path(key)
        with atomic_output_file(path) as temporary:  # no half-written file is ever read
            save_file({FEATURES_KEY: features.detach().cpu().contiguous()}, str(temporary))


class CachedFeatureCollator:
    """Wraps a `LlavaDataCollator`: batches carry `vision_features` from the cache instead of `pixel_values`.

    Images missing from the cache are encoded with the model's frozen vision tower and stored (the first epoch);
    later batches only read. Everything else (templates, labels, length checks, skipping) is the wrapped
    collator's.
    """

    def __init__(self, collator, model, cache: FeatureCache):
        self.collator = collator
        self.model = model
        self.cache = cache

    def __getattr__(self, name: str) -> Any:  # processor, max_length, skipped, encode, problem, ...
        return getattr(self.__dict__["collator"], name)

    @torch.no_grad()
    def features_for(self, pixel_values: torch.Tensor) -> torch.Tensor:
        keys = [image_key(image) for image in pixel_values]
        missing = [index for index, key in enumerate(keys) if key not in self.cache]
        if missing:
            computed = self.model.get_vision_features(pixel_values[missing])
            for index, features in zip(missing, computed):
                self.cache.put(keys[index], features)
        return torch.stack([self.cache.get(key) for key in keys])

    def prefill(self, dataset, batch_size: int = 16) -> int:
        """Encode every image of `dataset` not yet cached, in this process; returns the number of images seen.

        Training calls this before the first step, so that DataLoader worker processes (which must not run a GPU
        model) only ever read the cache.
        """
        seen = 0
        for start in range(0, len(dataset), batch_size):
            examples = [dataset[index] for index in range(start, min(start + batch_size, len(dataset)))]
            encoded = [self.collator.encode(example) for example in examples]
            pixel_values = [sample["pixel_values"] for sample in encoded if sample["pixel_values"] is not None]
            if pixel_values:
                images = torch.cat(pixel_values)
                self.features_for(images)
                seen += len(images)
        return seen

    def __call__(self, examples: list[dict[str, Any]]) -> BatchFeature:
        batch = dict(self.collator(examples))
        pixel_values = batch.pop("pixel_values", None)
        if pixel_values is not None:
            batch[FEATURES_KEY] = self.features_for(pixel_values)
        return BatchFeature(batch)


def attach_feature_cache(collator, model, directory: str | os.PathLike) -> CachedFeatureCollator:
    """Wrap `collator` so that a frozen vision tower runs once per image (stage 1)."""
    from .parameters import trainable_parameters_per_part

    if trainable_parameters_per_part(model)["vision_tower"]:
        raise ValueError("The feature cache needs a frozen vision tower (stage 1).")
    return CachedFeatureCollator(collator, model, FeatureCache(directory, vision_fingerprint(model)))


__all__ = ["CachedFeatureCollator", "FeatureCache", "attach_feature_cache", "image_key", "vision_fingerprint"]
