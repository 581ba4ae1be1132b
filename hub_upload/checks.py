"""Static checks of an export folder: every file a Hub user's `from_pretrained` will need is there.

These run before the (slower) loading checks of the preflight, and exist so that a missing file is
reported by *its name* ("processor_config.json is missing") rather than as whatever exception
transformers raises three calls deep when it does not find it.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

#: The Auto classes a LLaVA model folder must map to its remote code. transformers resolves each Auto class
#: through its own `config.auto_map` entry (one missing entry falls back to a built-in class or fails), so
#: every class a user may load with is listed.
REQUIRED_MODEL_AUTO_CLASSES = ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForImageTextToText")

#: Packages of this project: remote code that imports them works here and breaks for Hub users.
PROJECT_PACKAGES = frozenset(
    {"modeling_llava", "processing", "training", "hub_upload", "datagen", "evaluation", "inference", "demo", "llava_cli"}
)

CHAT_TEMPLATE_FILE = "chat_template.jinja"
PROCESSOR_CONFIG_FILE = "processor_config.json"
ADAPTER_CONFIG_FILE = "adapter_config.json"
SAFETENSORS_INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a folder: the file concerned and what is wrong with it."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


def is_adapter_folder(folder: str | Path) -> bool:
    """A PEFT adapter export (weights are a delta on a base model) rather than a full model."""
    return (Path(folder) / ADAPTER_CONFIG_FILE).is_file()


def _read_json(folder: Path, name: str, problems: list[Problem]) -> dict | None:
    path = folder / name
    if not path.is_file():
        problems.append(Problem(name, "required file is missing"))
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        problems.append(Problem(name, f"not valid JSON ({error})"))
        return None
    if not isinstance(data, dict):
        problems.append(Problem(name, "expected a JSON object"))
        return None
    return data


def _auto_map_modules(auto_map: dict, source: str, problems: list[Problem]) -> set[str]:
    """Module files named by an `auto_map` (`"module.Class"`, or a list for tokenizers)."""
    modules = set()
    for auto_class, reference in auto_map.items():
        for ref in reference if isinstance(reference, list) else [reference]:
            if ref is None:
                continue
            if "--" in ref:
                problems.append(
                    Problem(source, f"auto_map[{auto_class!r}] = {ref!r} points at code in another repository; "
                            "export the code beside the weights instead")
                )
                continue
            modules.add(ref.rsplit(".", 1)[0] + ".py")
    return modules


def _check_python_file(folder: Path, name: str, problems: list[Problem], seen: set[str]) -> None:
    """The file exists, parses, and imports only installed libraries or sibling files that exist."""
    if name in seen:
        return
    seen.add(name)
    path = folder / name
    if not path.is_file():
        problems.append(Problem(name, "remote-code file is missing (named by an auto_map or a relative import)"))
        return
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
    except SyntaxError as error:
        problems.append(Problem(name, f"does not parse ({error.msg}, line {error.lineno})"))
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            if node.module:
                _check_python_file(folder, node.module.replace(".", "/") + ".py", problems, seen)
            else:  # `from . import x`
                for alias in node.names:
                    _check_python_file(folder, alias.name + ".py", problems, seen)
        else:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            for imported in names:
                if imported.split(".")[0] in PROJECT_PACKAGES:
                    problems.append(
                        Problem(name, f"imports the project package {imported!r}, which Hub users do not have; "
                                "remote code may import only torch, transformers and its sibling files")
                    )


def _check_weights(folder: Path, problems: list[Problem]) -> None:
    index_path = folder / SAFETENSORS_INDEX_FILE
    if index_path.is_file():
        index = _read_json(folder, SAFETENSORS_INDEX_FILE, problems)
        if index is None:
            return
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            problems.append(Problem(SAFETENSORS_INDEX_FILE, "has no weight_map"))
            return
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                problems.append(Problem(shard, f"weight shard listed in {SAFETENSORS_INDEX_FILE} is missing"))
    elif not (folder / "model.safetensors").is_file():
        problems.append(
            Problem("model.safetensors", f"no weights: neither model.safetensors nor {SAFETENSORS_INDEX_FILE}")
        )


def _check_processor(folder: Path, problems: list[Problem], python_files: set[str]) -> None:
    processor_config = _read_json(folder, PROCESSOR_CONFIG_FILE, problems)
    if processor_config is not None:
        auto_map = processor_config.get("auto_map", {})
        if "AutoProcessor" not in auto_map:
            problems.append(Problem(PROCESSOR_CONFIG_FILE, "auto_map has no AutoProcessor entry"))
        python_files |= _auto_map_modules(auto_map, PROCESSOR_CONFIG_FILE, problems)
    tokenizer_config = _read_json(folder, "tokenizer_config.json", problems)
    if tokenizer_config is not None:
        python_files |= _auto_map_modules(tokenizer_config.get("auto_map", {}), "tokenizer_config.json", problems)
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        problems.append(Problem("tokenizer.json", "tokenizer vocabulary is missing (tokenizer.json or tokenizer.model)"))
    template = folder / CHAT_TEMPLATE_FILE
    if not template.is_file():
        problems.append(Problem(CHAT_TEMPLATE_FILE, "chat template is missing; chat and pipeline users need it"))
    elif not template.read_text(encoding="utf-8").strip():
        problems.append(Problem(CHAT_TEMPLATE_FILE, "chat template is empty"))


def check_export_folder(folder: str | Path) -> list[Problem]:
    """Every problem found in an export folder (empty list: the folder is complete).

    A full model needs config.json with a complete `auto_map`, generation_config.json, weights
    (single file or index + every shard), the processor (processor_config.json, tokenizer files,
    chat_template.jinja), every remote-code `.py` the auto_maps and relative imports name, and
    the README.md card. An adapter needs adapter_config.json (with its base model),
    adapter_model.safetensors and the card.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [Problem(str(folder), "not a folder")]
    problems: list[Problem] = []
    python_files: set[str] = set()
    if is_adapter_folder(folder):
        adapter_config = _read_json(folder, ADAPTER_CONFIG_FILE, problems)
        if adapter_config is not None and not adapter_config.get("base_model_name_or_path"):
            problems.append(Problem(ADAPTER_CONFIG_FILE, "base_model_name_or_path is not set"))
        if not (folder / "adapter_model.safetensors").is_file():
            problems.append(Problem("adapter_model.safetensors", "adapter weights are missing"))
        # The processor comes from the base model's repo: transformers 5.24's AutoProcessor cannot load
        # from a repo without config.json, and an adapter repo must not have one (it would read as a model).
    else:
        config = _read_json(folder, "config.json", problems)
        if config is not None:
            auto_map = config.get("auto_map") or {}
            missing = [name for name in REQUIRED_MODEL_AUTO_CLASSES if name not in auto_map]
            if missing:
                problems.append(Problem("config.json", f"auto_map lacks {', '.join(missing)}"))
            if config.get("model_type") == "llava":
                problems.append(
                    Problem("config.json", "model_type 'llava' is transformers' built-in LLaVA and would load "
                            "without this folder's remote code; use the remote model_type")
                )
            python_files |= _auto_map_modules(auto_map, "config.json", problems)
            # `pipeline()` imports a custom pipeline's module from the repo, like an auto_map entry.
            pipelines = {task: spec.get("impl") for task, spec in (config.get("custom_pipelines") or {}).items()}
            python_files |= _auto_map_modules(pipelines, "config.json custom_pipelines", problems)
        if not (folder / "generation_config.json").is_file():
            problems.append(Problem("generation_config.json", "required file is missing"))
        _check_weights(folder, problems)
        _check_processor(folder, problems, python_files)
    seen: set[str] = set()
    for name in sorted(python_files):
        _check_python_file(folder, name, problems, seen)
    if not (folder / "README.md").is_file():
        problems.append(Problem("README.md", "model card is missing"))
    return problems
