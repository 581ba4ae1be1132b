"""Both training stages end to end on tiny models: what learns, what stays bit-identical, what is saved, the TRL
loss path, resuming, and bad data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import TrainerCallback

from conftest import REPO_ROOT, tiny_llava_model, tiny_text_config
from training.train import PROJECTOR_FILE, SKIPPED_FILE, DataCheckError, run
from training_fixtures import caption_records, chat_records, save_tiny_model, tiny_processor, write_dataset, write_images


CONFIGS = REPO_ROOT / "training" / "configs"


def config(name: str, **overrides) -> dict:
    values = yaml.safe_load((CONFIGS / name).read_text())
    values.update({key: str(value) if isinstance(value, Path) else value for key, value in overrides.items()})
    return values


def chats_config(workdir: Path, output: str, **overrides) -> dict:
    """`tiny_stage2.yaml` from the tiny base model on the chat samples, into `workdir / output`."""
    return config(
        "tiny_stage2.yaml",
        model_name_or_path=workdir / "base",
        data_path=workdir / "chats.json",
        image_root=workdir / "images",
        output_dir=workdir / output,
        **overrides,
    )


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training")
    paths = write_images(root / "images")
    write_dataset(root / "captions.json", caption_records(paths, repeats=4))
    write_dataset(root / "chats.json", chat_records(paths, repeats=3))
    save_tiny_model(root / "base")
    return root


@pytest.fixture(scope="module")
def stage1(workdir):
    before = state(tiny_llava_model())
    output = run(
        config(
            "tiny_stage1.yaml",
            model_name_or_path=workdir / "base",
            data_path=workdir / "captions.json",
            image_root=workdir / "images",
            output_dir=workdir / "stage1",
            max_steps=30,
        )
    )
    return before, output


def test_stage1_loss_decreases(stage1):
    _, output = stage1
    assert len(output.losses) == 30
    assert mean(output.losses[-5:]) < mean(output.losses[:5]) - 0.05


def test_stage1_changes_only_the_projector(stage1):
    before, output = stage1
    after = state(output.model)
    assert before.keys() == after.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("model.multi_modal_projector.") for name in changed)
    assert changed == {name for name in before if name.startswith("model.multi_modal_projector.")}


def test_stage1_saves_projector_with_original_names_and_a_loadable_model(stage1):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, output = stage1
    projector = load_file(str(output.projector_path))
    assert output.projector_path.name == PROJECTOR_FILE
    assert sorted(projector) == ["model.mm_projector.0.bias", "model.mm_projector.0.weight",
                                 "model.mm_projector.2.bias", "model.mm_projector.2.weight"]
    ours = output.model.model.multi_modal_projector
    assert torch.equal(projector["model.mm_projector.2.weight"], ours.linear_2.weight)
    loaded = AutoModelForImageTextToText.from_pretrained(output.model_dir, trust_remote_code=True)
    AutoProcessor.from_pretrained(output.model_dir, trust_remote_code=True)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, output.model.state_dict()[name]), name


@pytest.mark.parametrize("supervised_logits_loss", [False, True], ids=["trl-fused-head", "supervised-logits"])
def test_trl_loss_equals_model_loss_and_the_projector_gets_gradients(workdir, supervised_logits_loss):
    from training.arguments import LlavaSFTConfig
    from training.collators import stage1_collator
    from training.trainer import LlavaSFTTrainer, configure_trainable_parameters
    from processing.llava_data import load_llava_dataset, to_trl_dataset
    from processing import LlavaProcessor

    model = tiny_llava_model().train()
    processor = LlavaProcessor.from_pretrained(workdir / "base", trust_remote_code=True)
    configure_trainable_parameters(model, stage=1)
    dataset = to_trl_dataset(load_llava_dataset(workdir / "captions.json", workdir / "images"), workdir / "images")
    collator = stage1_collator(processor, max_length=512)
    trainer = LlavaSFTTrainer(
        model=model,
        args=LlavaSFTConfig(output_dir=str(workdir / "trl_loss"), report_to="none", activation_checkpointing=False),
        data_collator=collator,
        train_dataset=dataset,
        processing_class=processor,
        supervised_logits_loss=supervised_logits_loss,
    )
    batch = collator([dataset[i] for i in range(4)])
    trl_loss = trainer.compute_loss(model, dict(batch))
    reference = model(**batch).loss
    assert torch.allclose(trl_loss, reference, atol=1e-5), (trl_loss, reference)
    # with gradient accumulation the Trainer passes the token count of all micro-batches
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    scaled = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2 * supervised))
    assert torch.allclose(scaled, reference / 2, atol=1e-5)
    if supervised_logits_loss:
        logs = trainer._metrics["train"]
        assert 0.0 <= logs["mean_token_accuracy"][-1] <= 1.0 and logs["entropy"][-1] > 0
    trl_loss.backward()
    gradients = [p.grad for p in model.model.multi_modal_projector.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in gradients)
    assert all(p.grad is None for p in model.model.language_model.parameters())


@pytest.fixture(scope="module")
def stage2(workdir, stage1):
    _, first = stage1
    before = state(first.model)
    output = run(
        config(
            "tiny_stage2.yaml",
            model_name_or_path=first.model_dir,
            data_path=workdir / "chats.json",
            image_root=workdir / "images",
            output_dir=workdir / "stage2",
            max_steps=25,
        )
    )
    return before, output


def test_stage2_from_the_stage1_folder_learns_and_keeps_the_vision_tower(stage2):
    before, output = stage2
    assert mean(output.losses[-5:]) < mean(output.losses[:5]) - 0.1
    after = state(output.model)
    vision = [name for name in before if name.startswith("model.vision_tower.")]
    assert vision and all(torch.equal(before[name], after[name]) for name in vision)
    changed = {name.split(".")[1] for name in before if not torch.equal(before[name], after[name])}
    assert {"multi_modal_projector", "language_model"} <= changed


def test_stage2_from_the_projector_artifact(workdir, stage1):
    _, first = stage1
    output = run(
        config(
            "tiny_stage2.yaml",
            model_name_or_path=workdir / "base",
            projector_path=first.projector_path,
            data_path=workdir / "chats.json",
            image_root=workdir / "images",
            output_dir=workdir / "stage2_from_projector",
            max_steps=1,
            learning_rate=0.0,
            projector_learning_rate=0.0,
        )
    )
    ours = output.model.model.multi_modal_projector.state_dict()
    theirs = first.model.model.multi_modal_projector.state_dict()
    assert all(torch.equal(ours[name], theirs[name]) for name in theirs)


class OptimizerGroupsSpy(TrainerCallback):
    """Records (learning rate, number of parameters) of each optimizer group in `seen["groups"]`."""

    def __init__(self, seen: dict):
        self.seen = seen

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.seen["groups"] = [(group["lr"], len(group["params"])) for group in optimizer.param_groups]


def test_projector_learning_rate_gets_its_own_optimizer_group(workdir):
    seen = {}
    model = tiny_llava_model()
    output = run(
        chats_config(workdir, "stage2_lr", max_steps=1, learning_rate=1e-3, projector_learning_rate=5e-3),
        callbacks=[OptimizerGroupsSpy(seen)],
    )
    projector_params = len(list(model.model.multi_modal_projector.parameters()))
    rates = {lr for lr, _ in seen["groups"]}
    assert rates == {1e-3, 5e-3}
    assert sum(count for lr, count in seen["groups"] if lr == 5e-3) == projector_params
    assert output.losses


def test_vision_tower_learning_rate_gets_its_own_optimizer_group(workdir):
    seen = {}
    arguments = dict(
        model_name_or_path=workdir / "base",
        data_path=workdir / "chats.json",
        image_root=workdir / "images",
        max_steps=1,
        learning_rate=1e-3,
        projector_learning_rate=5e-3,
        vision_tower_learning_rate=2e-4,
    )
    run(config("tiny_stage2.yaml", output_dir=workdir / "stage2_tower_lr", freeze_vision_tower=False, **arguments),
        callbacks=[OptimizerGroupsSpy(seen)])
    tower = tiny_llava_model().model.vision_tower
    rates = {lr for lr, _ in seen["groups"]}
    assert rates == {1e-3, 5e-3, 2e-4}
    # the tower's parameters that reach the projector (the last layer's are unused and stay frozen)
    assert 0 < sum(count for lr, count in seen["groups"] if lr == 2e-4) <= len(list(tower.parameters()))

    with pytest.raises(ValueError, match="vision_tower_learning_rate is set but no trainable vision_tower"):
        run(config("tiny_stage2.yaml", output_dir=workdir / "stage2_frozen_tower_lr", **arguments))


def test_lora_stage2_trains_adapters_and_projector_and_merges(workdir):
    from transformers import AutoModelForImageTextToText

    before = state(tiny_llava_model())
    output = run(
        chats_config(workdir, "stage2_lora", use_peft=True, lora_r=4, lora_alpha=8, max_steps=4)
    )
    assert (output.output_dir / "adapter_model.safetensors").is_file()
    merged = output.merged_dir
    assert output.model_dir == merged
    for name in ("modeling_llava.py", "configuration_llava.py", "processing_llava.py", "processor_config.json"):
        assert (merged / name).is_file(), name
    loaded = AutoModelForImageTextToText.from_pretrained(merged, trust_remote_code=True)
    after = loaded.state_dict()
    assert after.keys() == before.keys()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert any(".multi_modal_projector." in name for name in changed)
    assert any(".self_attn.q_proj." in name for name in changed)
    assert not any(name.startswith("model.vision_tower.") for name in changed)
    assert not any("embed_tokens" in name or name.startswith("lm_head") for name in changed)


class StopAfter(TrainerCallback):
    """Simulates a crash: raises once `step` is done (and its checkpoint written)."""

    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise KeyboardInterrupt("simulated interruption")


def test_resume_after_an_interruption_reproduces_the_uninterrupted_losses(workdir):
    common = dict(
        model_name_or_path=workdir / "base",
        data_path=workdir / "chats.json",
        image_root=workdir / "images",
        max_steps=6,
        save_strategy="steps",
        save_steps=3,
        learning_rate=1e-3,
        lr_scheduler_type="linear",
    )
    full = run(config("tiny_stage2.yaml", output_dir=workdir / "resume_full", **common))
    interrupted = workdir / "resume_cut"
    with pytest.raises(KeyboardInterrupt):
        run(config("tiny_stage2.yaml", output_dir=interrupted, **common), callbacks=[StopAfter(3)])
    assert (interrupted / "checkpoint-3").is_dir() and not (interrupted / "checkpoint-6").exists()
    resumed = run(config("tiny_stage2.yaml", output_dir=interrupted, resume_from_checkpoint="true", **common))
    # The resumed history starts with the checkpoint's (steps 1-3); steps 4-6 were trained after resuming.
    def losses_by_step(output):
        return {entry["step"]: entry["loss"] for entry in output.log_history if "loss" in entry}

    full_losses, resumed_losses = losses_by_step(full), losses_by_step(resumed)
    assert sorted(full_losses) == sorted(resumed_losses) == [1, 2, 3, 4, 5, 6]
    assert [resumed_losses[step] for step in (4, 5, 6)] == pytest.approx([full_losses[step] for step in (4, 5, 6)], abs=1e-5)


def write_bad_data(workdir: Path) -> Path:
    records = json.loads((workdir / "chats.json").read_text())[:5]
    records.append({"id": "missing-image", "image": "nope.png",
                    "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "x"}]})
    records.append({"id": "too-long", "conversations": [{"from": "human", "value": "y" * 600},
                                                        {"from": "gpt", "value": "z"}]})
    records.append({"id": "no-answer", "conversations": [{"from": "human", "value": "hi"}]})
    return write_dataset(workdir / "bad.json", records)


def test_bad_data_is_refused_before_training_with_a_report(workdir):
    bad = write_bad_data(workdir)
    with pytest.raises(DataCheckError) as error:
        run(config("tiny_stage2.yaml", model_name_or_path=workdir / "base", data_path=bad,
                   image_root=workdir / "images", output_dir=workdir / "bad_error"))
    message = str(error.value)
    assert "missing-image" in message and "no-answer" in message
    assert not (workdir / "bad_error" / "model.safetensors").exists()
    # the length check runs too once the structural problems are gone
    records = [r for r in json.loads(bad.read_text()) if r["id"] not in ("missing-image", "no-answer")]
    long_only = write_dataset(workdir / "long.json", records)
    with pytest.raises(DataCheckError, match=r"too-long.*max_length=512"):
        run(config("tiny_stage2.yaml", model_name_or_path=workdir / "base", data_path=long_only,
                   image_root=workdir / "images", output_dir=workdir / "bad_error"))


def test_bad_data_is_skipped_with_a_report_when_asked(workdir):
    bad = write_bad_data(workdir)
    output = run(config("tiny_stage2.yaml", model_name_or_path=workdir / "base", data_path=bad,
                        image_root=workdir / "images", output_dir=workdir / "bad_skip", on_bad_data="skip",
                        max_steps=3))
    assert len(output.losses) == 3
    report = json.loads((workdir / "bad_skip" / SKIPPED_FILE).read_text())
    assert {entry["sample_id"] for entry in report} == {"missing-image", "too-long", "no-answer"}
    assert {sample.sample_id for sample in output.skipped} == {"missing-image", "too-long", "no-answer"}


class AttentionSpy(TrainerCallback):
    def __init__(self, seen: dict):
        self.seen = seen

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.seen["language"] = model.model.language_model.config._attn_implementation
        self.seen["vision"] = model.model.vision_tower.config._attn_implementation


def test_attn_implementation_reaches_every_sub_model_and_is_not_saved(workdir):
    seen = {}
    output = run(
        chats_config(workdir, "stage2_eager", max_steps=2, attn_implementation="eager"),
        callbacks=[AttentionSpy(seen)],
    )
    assert seen == {"language": "eager", "vision": "eager"}
    assert "attn_implementation" not in Path(output.model_dir, "config.json").read_text()


class EmbeddingGradientSpy(TrainerCallback):
    """Records, before each optimizer step, whether the input lookup is sparse and the layout of its gradient."""

    def __init__(self):
        self.seen: list[tuple[bool, torch.layout]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        embedding = model.get_input_embeddings()
        self.seen.append((embedding.sparse, embedding.weight.grad.layout))


def train_stage2_directly(workdir: Path, model_dir: Path, output: str, **trainer_options):
    """A few stage-2 steps through `LlavaSFTTrainer` itself (the options `run` does not expose)."""
    from transformers import AutoModelForImageTextToText

    from processing import LlavaProcessor
    from processing.llava_data import load_llava_dataset, to_trl_dataset
    from training.arguments import LlavaSFTConfig
    from training.collators import stage2_collator
    from training.trainer import LlavaSFTTrainer, configure_trainable_parameters

    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True)
    configure_trainable_parameters(model, stage=2)
    processor = LlavaProcessor.from_pretrained(model_dir, trust_remote_code=True)
    dataset = to_trl_dataset(load_llava_dataset(workdir / "chats.json", workdir / "images"), workdir / "images")
    spy = EmbeddingGradientSpy()
    args = LlavaSFTConfig(output_dir=str(workdir / output), report_to="none", activation_checkpointing=False,
                          max_steps=4, per_device_train_batch_size=4, learning_rate=1e-2, save_strategy="no", seed=0)
    trainer = LlavaSFTTrainer(model=model, args=args, data_collator=stage2_collator(processor, max_length=512),
                              train_dataset=dataset, processing_class=processor, callbacks=[spy], **trainer_options)
    trainer.train()
    return model, spy.seen


def test_tied_embeddings_train_on_cpu_through_a_sparse_lookup_gradient_to_the_same_weights(workdir):
    tied = workdir / "tied_base"
    model = tiny_llava_model(text_config=tiny_text_config(tie_word_embeddings=True).to_dict())
    model.save_pretrained(tied)
    tiny_processor().save_pretrained(tied)
    start = model.get_input_embeddings().weight.detach().clone()

    sparse, seen_sparse = train_stage2_directly(workdir, tied, "tied_auto")  # the default on CPU
    dense, seen_dense = train_stage2_directly(workdir, tied, "tied_off", sparse_embedding_gradient=False)

    # sparse while training, yet the optimizer gets one dense gradient; the model leaves training as it came
    assert seen_sparse == [(True, torch.strided)] * 4 and not sparse.get_input_embeddings().sparse
    assert seen_dense == [(False, torch.strided)] * 4
    assert sparse.lm_head.weight is sparse.get_input_embeddings().weight
    assert not torch.allclose(sparse.get_input_embeddings().weight, start)
    for (name, trained), reference in zip(sparse.state_dict().items(), dense.state_dict().values()):
        assert torch.allclose(trained, reference, atol=1e-5), name


def test_untied_embeddings_keep_the_dense_lookup_gradient_and_forcing_it_names_why(workdir):
    _, seen = train_stage2_directly(workdir, workdir / "base", "untied_auto")  # tie_word_embeddings=False
    assert seen == [(False, torch.strided)] * 4
    with pytest.raises(ValueError, match=r"tied into one trainable weight \(tied and trainable: False\)"):
        train_stage2_directly(workdir, workdir / "base", "untied_forced", sparse_embedding_gradient=True)
