"""From a training output to the Hugging Face Hub.

- `export`: a training output (model, stage-1 projector, LoRA adapter) -> a Hub-ready folder, atomically;
- `card`: its README.md model card (YAML metadata, evaluation results);
- `checks` + `preflight`: the folder loads by repo id, offline, in a fresh process, as remote code;
- `push`: the upload (dry run, resumable, token never shown).
The `*_cli` modules are the `llava export / preflight / push` commands.
"""
