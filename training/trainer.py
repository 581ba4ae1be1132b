"""`LlavaSFTTrainer`: TRL's `SFTTrainer` plus what LLaVA training needs and TRL lacks.

- a separate learning rate for the projector (and a trained vision tower): their own optimizer parameter groups;
- optional length grouping by modality (image and text-only samples in separate batches);
- one named choice of the loss computation per device (`choose_loss`);
- `packing: true` done by the collator (`training.packing`), which TRL refuses for vision datasets;
- a sparse gradient for the input-embedding lookup when the embeddings are tied and train on CPU.

Which parameters learn in each stage is `training.parameters` (re-exported here).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from trl import SFTTrainer

from .parameters import (  # noqa: F401 - re-exported: the trainer's helpers have always been importable from here
    PROJECTOR_MARKER,
    VISION_TOWER_MARKER,
    configure_trainable_parameters,
    freeze_unused_vision_parameters,
    set_trainable,
    trainable_parameters_per_part,
)


TRL_LOSS = "trl"
SUPERVISED_LOGITS_LOSS = "supervised_logits"


def choose_loss(trainer: SFTTrainer, model: nn.Module, requested: bool | None = None) -> str:
    """Which computation gives the training loss: `TRL_LOSS` or `SUPERVISED_LOGITS_LOSS`; the one place that decides.

    There are three ways to the same loss (the mean negative log-likelihood of the supervised next tokens, image
    tokens never supervised), and why each exists:

    - TRL's (`TRL_LOSS`): `SFTTrainer` replaces the model's `forward` with a fused LM head that computes the
      log-probabilities in vocabulary tiles and never materialises the full logits, which is what keeps memory
      flat on a GPU with a large vocabulary. Its variants (label smoothing, `compute_loss_func`, `loss_type`
      other than `nll`) are TRL's too, so they always take this path.
    - The supervised-positions loss (`SUPERVISED_LOGITS_LOSS`, `LlavaSFTTrainer.compute_loss`): on CPU the fused
      head's Python-level tiling in float32 is slower than computing full logits, and projecting only the
      positions whose next token is supervised is cheaper than either; the loss is the same, `num_items_in_batch`
      included (docs/benchmarks.md has the measurements). Chosen when the model is on CPU.
    - The model's own (`LlavaForCausalLM.forward(labels=...)`): what a plain `transformers.Trainer`, evaluation
      and user code get; never chosen here, but the tests hold the two above to it.

    `requested` (the trainer's `supervised_logits_loss` argument) overrides the device's choice.
    """
    if trainer.label_smoother is not None or trainer.compute_loss_func is not None or trainer.args.loss_type != "nll":
        return TRL_LOSS  # TRL's own variants
    if requested is not None:
        return SUPERVISED_LOGITS_LOSS if requested else TRL_LOSS
    return SUPERVISED_LOGITS_LOSS if next(model.parameters()).device.type == "cpu" else TRL_LOSS


@contextmanager
def _packing_hidden_from_trl(args):
    """`args.packing` off while TRL's `SFTTrainer.__init__` reads it, and back after.

    TRL refuses its own packing (and padding-free batches) for vision datasets; in `llava train` the option means
    packing by the collator (`training.packing`), which TRL never sees: it only passes the collator's batches on.
    """
    packing = getattr(args, "packing", False)
    if not packing:
        yield
        return
    args.packing = False
    try:
        yield
    finally:
        args.packing = packing


@contextmanager
def saved_as_own_class(model: nn.Module) -> Iterator[None]:
    """While saving, give an FSDP2-sharded model back its own class.

    FSDP2 (`fully_shard`) shards a model in place by swapping its class for a subclass defined in torch,
    `FSDP<Name>`. transformers strips that prefix from `architectures` when saving, but a remote-code model's
    `save_pretrained` also records its class in config.json's `auto_map` and copies the file that defines it: the
    folder would name `_fsdp_init.FSDPLlavaForCausalLM` and hold torch's `_fsdp_*.py` files instead of
    `modeling_llava.py`, and not load. Any other model passes through unchanged.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded_class = type(model)
    if not issubclass(sharded_class, FSDPModule):
        yield
        return
    model.__class__ = next(cls for cls in sharded_class.__mro__ if not issubclass(cls, FSDPModule))
    try:
        yield
    finally:
        model.__class__ = sharded_class


class LlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` with projector / vision-tower learning rates and modality-grouped batches.

    Args:
        projector_learning_rate: learning rate of the projector's parameters (default: `args.learning_rate`).
        vision_tower_learning_rate: learning rate of the vision tower's parameters when it trains (default:
            `args.learning_rate`; LLaVA-OneVision's `mm_vision_tower_lr`).
        group_by_modality_length: batch image and text-only samples separately, similar lengths together
            (see `training.sampler.ModalityLengthGroupedSampler`).
        sample_lengths: token length of each training sample, negative for text-only samples; needed by
            `group_by_modality_length`.
        length_megabatch_mult: global batches sorted by length together (`ModalityLengthGroupedSampler`).
        supervised_logits_loss: compute the loss from logits at supervised positions only instead of TRL's fused
            LM head (True) or not (False). Default: `choose_loss` decides by device.
        sparse_embedding_gradient: give the input-embedding lookup a sparse gradient (its rows only) while
            training, when the input and output embeddings are one tied, trainable weight (see `train`). Default:
            on when the model is on CPU and trains in one process, without `torch_compile`.
        Other arguments: as `trl.SFTTrainer`.
    """

    def __init__(
        self,
        *args,
        projector_learning_rate: float | None = None,
        vision_tower_learning_rate: float | None = None,
        group_by_modality_length: bool = False,
        sample_lengths: list[int] | None = None,
        length_megabatch_mult: int = 1,
        supervised_logits_loss: bool | None = None,
        sparse_embedding_gradient: bool | None = None,
        **kwargs,
    ):
        self.sparse_embedding_gradient = sparse_embedding_gradient
        self.projector_learning_rate = projector_learning_rate
        self.vision_tower_learning_rate = vision_tower_learning_rate
        self.supervised_logits_loss = supervised_logits_loss
        self.group_by_modality_length = group_by_modality_length
        self.length_megabatch_mult = length_megabatch_mult
        self.sample_lengths = sample_lengths
        if group_by_modality_length and sample_lengths is None:
            raise ValueError("group_by_modality_length needs sample_lengths (negative for text-only samples).")
        if length_megabatch_mult < 1 or (length_megabatch_mult != 1 and not group_by_modality_length):
            raise ValueError(
                f"length_megabatch_mult={length_megabatch_mult}: it must be a positive number of global batches, "
                "and it only applies with group_by_modality_length: true."
            )
        with warnings.catch_warnings():
            # PEFT (0.21.2, the newest) reads transformers' deprecated `is_gradient_checkpointing` alias when it
            # wraps the model, which warns on every LoRA run; only that one warning, only here. Remove once PEFT
            # reads `is_activation_checkpointing`.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            with _packing_hidden_from_trl(kwargs.get("args", args[1] if len(args) > 1 else None)):
                super().__init__(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss `choose_loss` picks: TRL's, or the supervised-positions loss below."""
        if choose_loss(self, model, self.supervised_logits_loss) == TRL_LOSS:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        labels = inputs["labels"]
        next_tokens = labels[:, 1:]
        positions = (next_tokens != -100).any(0).nonzero().squeeze(-1)  # supervised somewhere in the batch
        model_inputs = {key: value for key, value in inputs.items() if key not in ("labels", "use_cache")}
        outputs = model(**model_inputs, use_cache=False, logits_to_keep=positions)
        logits = outputs.logits.float()
        targets = next_tokens[:, positions]
        supervised = targets != -100
        loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")
        count = supervised.sum() if num_items_in_batch is None else num_items_in_batch
        loss = loss / torch.as_tensor(count, device=loss.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # like TRL: DDP averages gradients over ranks
        self._log_token_metrics(inputs, logits, targets, supervised)
        return (loss, outputs) if return_outputs else loss

    def _log_token_metrics(self, inputs, logits: torch.Tensor, targets: torch.Tensor, supervised: torch.Tensor) -> None:
        """The metrics TRL logs on its own path (entropy, token accuracy, tokens seen), for the supervised positions."""
        mode = "train" if self.model.training else "eval"
        with torch.no_grad():
            log_probs = logits[supervised].log_softmax(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1).sum()
            correct = (logits[supervised].argmax(-1) == targets[supervised]).sum()
            valid = self.accelerator.gather_for_metrics(supervised.sum()).sum()
            entropy = self.accelerator.gather_for_metrics(entropy).sum()
            correct = self.accelerator.gather_for_metrics(correct).sum()
        self._metrics[mode]["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        self._metrics[mode]["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            # a packed batch has no attention_mask; like TRL for its padding-free batches, count its positions
            labels = inputs["labels"]
            tokens = inputs["attention_mask"].sum() if "attention_mask" in inputs else labels.new_tensor(labels.numel())
            self._total_train_tokens += self.accelerator.gather_for_metrics(tokens).sum().item()
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

    def train(self, *args, **kwargs):
        """`Trainer.train`, with the tied embedding's lookup giving a sparse gradient while it runs.

        A tied weight gets two gradients: a dense one from the LM head and one from the input lookup, which
        `nn.Embedding` materialises as a zero-filled vocabulary x hidden tensor, and autograd then adds the two
        into a third. With `sparse=True` the lookup's gradient is its rows only, added in place into the head's
        dense gradient, so the optimizer still gets one dense gradient and the same values (up to summation
        order), without the vocabulary-sized fill and add, which are a visible share of a CPU step with a large
        vocabulary (measured in docs/benchmarks.md, "Tied embeddings on CPU"). Only in one process: DDP plans sparse
        buckets for `sparse=True` modules.
        """
        embedding = self._embedding_for_sparse_gradient()
        if embedding is None:
            return super().train(*args, **kwargs)
        embedding.sparse = True
        try:
            return super().train(*args, **kwargs)
        finally:
            embedding.sparse = False  # a module attribute, not saved: the model leaves training as it came

    def _embedding_for_sparse_gradient(self) -> nn.Embedding | None:
        if self.sparse_embedding_gradient is False:
            return None
        embedding, head = self.model.get_input_embeddings(), self.model.get_output_embeddings()
        tied = (
            isinstance(embedding, nn.Embedding)
            and head is not None
            and head.weight is embedding.weight
            and embedding.weight.requires_grad
        )
        one_process = self.args.world_size == 1 and not (self.is_deepspeed_enabled or self.is_fsdp_enabled)
        if self.sparse_embedding_gradient is None:
            # not under torch.compile: its graphs would have to trace the sparse gradient too, untested here
            cpu = embedding.weight.device.type == "cpu" and not self.args.torch_compile
            return embedding if tied and one_process and cpu else None
        if not (tied and one_process):
            raise ValueError(
                "sparse_embedding_gradient=True needs input and output embeddings tied into one trainable weight "
                f"(tied and trainable: {tied}) and training in one process without DeepSpeed or FSDP "
                f"(world size {self.args.world_size})."
            )
        return embedding

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # Only the writing process gets here, after the collective gather: presenting the model as its own class
        # for the write cannot leave another rank waiting.
        with saved_as_own_class(self.model):
            super()._save(output_dir, state_dict=state_dict)

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        # Trainer has one learning rate; the projector (and a trained vision tower) get their own groups here.
        options = {"projector_learning_rate": (PROJECTOR_MARKER, self.projector_learning_rate),
                   "vision_tower_learning_rate": (VISION_TOWER_MARKER, self.vision_tower_learning_rate)}
        own_rates = {marker: rate for marker, rate in options.values() if rate is not None}
        if not own_rates or self.optimizer is not None:
            return super().create_optimizer(model)
        opt_model = self.model if model is None else model
        decay_parameters = set(self.get_decay_parameter_names(opt_model))
        groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, parameter in opt_model.named_parameters():
            if parameter.requires_grad:
                part = next((marker for marker in own_rates if marker in name), "")
                groups.setdefault((part, name in decay_parameters), []).append(parameter)
        for option, (marker, rate) in options.items():
            if rate is not None and not any(part == marker for part, _ in groups):
                raise ValueError(f"{option} is set but no trainable {marker} parameter was found.")
        parameter_groups = [
            {
                "params": parameters,
                "weight_decay": self.args.weight_decay if decay else 0.0,
                **({"lr": own_rates[part]} if part else {}),
            }
            for (part, decay), parameters in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        from .sampler import ModalityLengthGroupedSampler

        return ModalityLengthGroupedSampler(
            lengths=self.sample_lengths,
            batch_size=self.args.per_device_train_batch_size,
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
            megabatch_mult=self.length_megabatch_mult,
        )
