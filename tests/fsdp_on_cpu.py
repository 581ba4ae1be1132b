"""`llava ...` with accelerate's FSDP kept on CPU: the script the FSDP test launches (test-only, never shipped).

accelerate (1.16) attaches the FSDP plugin only on accelerators (GPU, NPU, XPU, ...): on a CPU launch it joins the
processes over gloo as MULTI_CPU, which is DDP, and drops the plugin without a word; torch's FSDP2 itself runs on
CPU over gloo. This script lifts that one gate (the accelerator state keeps the FSDP plugin on a MULTI_CPU launch)
and runs the `llava` command line unchanged, so that a test drives accelerate's FSDP2 wrapping, its sharded
checkpoints and their resume, and transformers' Trainer under FSDP, on two CPU processes:

    accelerate launch --config_file training/configs/accelerate/fsdp.yaml --num_processes 2 \
        tests/fsdp_on_cpu.py train --config ... --use_cpu true
"""

from __future__ import annotations

import sys

from accelerate import state
from accelerate.utils import DistributedType


_accelerator_state_init = state.AcceleratorState.__init__


def _keep_fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    _accelerator_state_init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    if self.distributed_type == DistributedType.MULTI_CPU and fsdp_plugin is not None:
        # what AcceleratorState does for an accelerator's FSDP launch, the shared process state included
        self.distributed_type = DistributedType.FSDP
        self.fsdp_plugin = fsdp_plugin
        state.PartialState._shared_state["distributed_type"] = DistributedType.FSDP


state.AcceleratorState.__init__ = _keep_fsdp_on_cpu


if __name__ == "__main__":
    from llava_cli.main import main

    sys.exit(main(sys.argv[1:]))
