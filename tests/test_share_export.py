"""`llava export` and `llava preflight` on a tiny trained model: contents, atomicity, missing files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from conftest import REPO_ROOT, tiny_llava_model
from processing.files import find_stale_staging_dirs
from hub_upload.export import ExportError, ExportOptions, export_model
from hub_upload.preflight import run_preflight
from share_fixtures import save_tiny_training_output, tiny_processor

BASE_IDS = ["openai/clip-vit-large-patch14", "HuggingFaceTB/SmolLM2-135M-Instruct"]
REQUIRED_FILES = ["modeling_llava.py", "configuration_llava.py", "processing_llava.py", "pipeline_llava.py",
                  "processor_config.json", "chat_template.jinja"]


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llava_cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def all_weights(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


@pytest.fixture(scope="module")
def training_output(tmp_path_factory) -> Path:
    return save_tiny_training_output(tmp_path_factory.mktemp("run") / "final")


@pytest.fixture(scope="module")
def exported(training_output, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    work = tmp_path_factory.mktemp("export")
    metrics = work / "scienceqa" / "metrics.json"
    metrics.parent.mkdir()
    metrics.write_text(json.dumps({"metrics": {"accuracy": {"NAT": 61.5, "average": 58.25}}, "num_questions": 40}))
    out = work / "tiny-llava"
    result = run_cli("export", str(training_output), str(out), "--max-shard-size", "100KB",
                     "--repo-id", "me/tiny-llava", "--license", "apache-2.0",
                     "--dataset", "liuhaotian/LLaVA-Instruct-150K", "--metrics", str(metrics),
                     "--llava-hf-out", str(work / "tiny-llava-hf"), "--preflight",
                     *[arg for base in BASE_IDS for arg in ("--base-model-id", base)])
    assert result.returncode == 0, result.stderr
    return out, result


def test_export_writes_a_hub_ready_folder(exported, training_output):
    out, result = exported
    names = {p.name for p in out.iterdir()}
    shards = sorted(n for n in names if n.startswith("model-") and n.endswith(".safetensors"))
    assert len(shards) > 1 and "model.safetensors.index.json" in names
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    for name in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "README.md",
                 *REQUIRED_FILES]:
        assert name in names, name
    config = json.loads((out / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForCausalLM",
                                       "AutoModelForImageTextToText", "AutoProcessor"}
    assert config["model_type"] == "llava_remote"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] is not None
    # Same weights as trained, tensor for tensor.
    trained, exported_weights = all_weights(training_output), all_weights(out)
    assert trained.keys() == exported_weights.keys()
    assert all(torch.equal(trained[k], exported_weights[k]) for k in trained)
    initial = tiny_llava_model(seed=0).state_dict()
    assert not torch.equal(initial["model.multi_modal_projector.linear_1.weight"],
                           exported_weights["model.multi_modal_projector.linear_1.weight"])  # a trained model
    # Nothing but the final folder is left beside it.
    assert not find_stale_staging_dirs(out)
    assert "README.md" in result.stdout and "model.safetensors.index.json" in result.stdout


def test_llava_hf_copy_in_a_separate_folder(exported):
    from transformers import LlavaForConditionalGeneration

    out, _ = exported
    hf_folder = out.parent / "tiny-llava-hf"
    assert json.loads((hf_folder / "config.json").read_text())["model_type"] == "llava"
    assert not list(hf_folder.glob("*.py"))  # built-in classes: no remote code
    model = LlavaForConditionalGeneration.from_pretrained(hf_folder)
    assert model.config.image_token_id == json.loads((out / "config.json").read_text())["image_token_id"]


def test_model_card_metadata(exported):
    out, _ = exported
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.pipeline_tag == "image-text-to-text"
    assert data.base_model == BASE_IDS and data.datasets == ["liuhaotian/LLaVA-Instruct-150K"]
    assert data.license == "apache-2.0" and "llava" in data.tags
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert results == {("scienceqa", "accuracy.NAT"): 61.5, ("scienceqa", "accuracy.average"): 58.25}
    assert 'pipeline("image-text-to-text", model="me/tiny-llava"' in card.text


def test_card_base_models_default_to_the_checkpoints_the_model_was_built_from(tmp_path):
    src = save_tiny_training_output(tmp_path / "run")
    config = json.loads((src / "config.json").read_text())
    config.update(vision_checkpoint=BASE_IDS[0], language_checkpoint="/local/path/to/llm.gguf")
    (src / "config.json").write_text(json.dumps(config))
    export_model(src, tmp_path / "out")
    # Local paths are meaningless on the Hub and are left out.
    assert ModelCard.load(tmp_path / "out" / "README.md").data.base_model == [BASE_IDS[0]]


def test_preflight_passes_on_the_export(exported):
    _, result = exported  # `llava export ... --preflight` ran `llava preflight OUT` as its last step
    for check in ["AutoConfig", "AutoModel ", "AutoModelForCausalLM", "AutoModelForImageTextToText", "AutoProcessor",
                  'pipeline("image-to-text")', 'pipeline("image-text-to-text")']:
        assert f"ok    {check}" in result.stdout, check
    assert "preflight of" in result.stdout and "as 'me/tiny-llava'" in result.stdout and "preflight PASSED" in result.stdout


@pytest.mark.parametrize("missing", REQUIRED_FILES)
def test_preflight_names_a_missing_required_file(exported, tmp_path, missing):
    folder = shutil.copytree(exported[0], tmp_path / "broken")
    (folder / missing).unlink()
    report = run_preflight(folder)
    assert not report.passed
    assert missing in report.format()


def test_preflight_runs_remote_code_without_the_project_installed(exported, tmp_path):
    """Remote code that reaches for this project's packages works here but not for a Hub user: caught."""
    folder = shutil.copytree(exported[0], tmp_path / "leaky")
    code = (folder / "configuration_llava.py").read_text()
    # A dynamic import, invisible to the static checks; only the isolated loading can catch it.
    (folder / "configuration_llava.py").write_text(code + "\nimport importlib\nimportlib.import_module('modeling_llava')\n")
    report = run_preflight(folder)
    assert not report.passed
    failed = [c for c in report.checks if not c.ok]
    assert failed and failed[0].name == "AutoConfig" and "blocked by preflight" in failed[0].detail


def test_static_check_rejects_project_imports_in_remote_code(exported, tmp_path):
    folder = shutil.copytree(exported[0], tmp_path / "leaky")
    path = folder / "modeling_llava.py"
    path.write_text("from processing.processing_llava import LlavaProcessor\n" + path.read_text())
    report = run_preflight(folder)
    assert not report.passed and "modeling_llava.py: imports the project package 'processing" in report.format()


def test_interrupted_export_leaves_nothing_that_looks_complete(training_output, tmp_path):
    out = tmp_path / "out"
    # Killed (SIGKILL, no cleanup possible) after the weights and processor are written, before the card.
    code = textwrap.dedent(f"""
        import os, signal
        import hub_upload.export as export
        export.write_model_card = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
        export.export_model({str(training_output)!r}, {str(out)!r})
    """)
    killed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9
    assert not out.exists()
    stale = find_stale_staging_dirs(out)
    assert len(stale) == 1 and stale[0].name.startswith(".out.incomplete-")
    assert any(stale[0].glob("*.safetensors"))  # it really died mid-export
    # An error (rather than a kill) cleans up after itself; a later export is not blocked by either.
    with pytest.raises(ExportError):
        export_model(training_output, out, ExportOptions(chat_template=str(tmp_path / "missing.jinja")))
    assert not out.exists() and len(find_stale_staging_dirs(out)) == 1
    export_model(training_output, out)
    assert (out / "README.md").is_file()


def test_export_refuses_to_overwrite_unless_asked(exported, training_output):
    out = exported[0]
    before = sorted(p.name for p in out.iterdir())
    result = run_cli("export", str(training_output), str(out))
    assert result.returncode == 1 and "already exists" in result.stderr and "--overwrite" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == before


def test_stage1_projector_file_on_a_base_model(training_output, tmp_path):
    trained = tiny_llava_model(seed=1)
    projector = {k: v.clone() for k, v in trained.state_dict().items() if "multi_modal_projector" in k}
    # The original LLaVA's key names (`mm_projector.{0,2}`), as a stage-1 run of the original code saves them.
    original_names = {k.replace("multi_modal_projector.linear_1", "mm_projector.0")
                      .replace("multi_modal_projector.linear_2", "mm_projector.2"): v for k, v in projector.items()}
    save_file(original_names, tmp_path / "mm_projector.safetensors")
    out = export_model(tmp_path / "mm_projector.safetensors", tmp_path / "out",
                       ExportOptions(base_model=str(training_output)))
    weights, base = all_weights(out), all_weights(training_output)
    for key, value in weights.items():
        expected = projector[key] if key in projector else base[key]
        assert torch.equal(value, expected), key
    with pytest.raises(ExportError, match="--base-model"):
        export_model(tmp_path / "mm_projector.safetensors", tmp_path / "out2")


def test_export_error_names_a_trl_checkpoint_to_pick(tmp_path):
    (tmp_path / "run" / "checkpoint-10").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-200").mkdir()
    with pytest.raises(ExportError, match="checkpoint-200"):
        export_model(tmp_path / "run", tmp_path / "out")


@pytest.fixture(scope="module")
def lora_run(training_output, tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model

    from modeling_llava import LlavaForCausalLM

    folder = tmp_path_factory.mktemp("lora") / "adapter"
    base = LlavaForCausalLM.from_pretrained(training_output)
    config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                        target_modules=r".*language_model.*\.(q_proj|v_proj)", modules_to_save=["multi_modal_projector"])
    torch.manual_seed(3)
    peft_model = get_peft_model(base, config)
    peft_model.save_pretrained(folder)
    tiny_processor().save_pretrained(folder)
    # As a training run on a local base leaves it: a local path, useless to Hub users.
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(training_output)
    return folder


def test_lora_adapter_exported_as_adapter_passes_preflight(lora_run, exported, tmp_path):
    with pytest.raises(ExportError, match="--base-model-repo-id"):
        export_model(lora_run, tmp_path / "no-base-id")
    out = export_model(lora_run, tmp_path / "adapter", ExportOptions(base_model_repo_id="me/tiny-llava"))
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "me/tiny-llava"
    data = ModelCard.load(out / "README.md").data
    assert data.library_name == "peft" and data.base_model == ["me/tiny-llava"] and "lora" in data.tags
    assert not (out / "config.json").exists()
    report = run_preflight(out, base_model=exported[0])
    assert report.passed, report.format()
    assert [c.name for c in report.checks] == ["PeftModel.from_pretrained", "AutoProcessor", 'pipeline("image-to-text")',
                                               'pipeline("image-text-to-text")']
    assert "from me/tiny-llava" in report.format()


def test_lora_adapter_merged_keeps_the_adapted_outputs(lora_run, training_output, tmp_path):
    from peft import PeftModel

    from modeling_llava import LlavaForCausalLM

    out = export_model(lora_run, tmp_path / "merged", ExportOptions(base_model=str(training_output), merge=True,
                                                                  base_model_repo_id="me/tiny-llava"))
    assert not (out / "adapter_config.json").exists() and (out / "config.json").is_file()
    assert run_preflight(out).passed
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    reference = PeftModel.from_pretrained(LlavaForCausalLM.from_pretrained(training_output), lora_run).eval()
    merged = LlavaForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-5)
    assert ModelCard.load(out / "README.md").data.base_model == ["me/tiny-llava"]


def test_metrics_files_that_cannot_go_into_a_card_are_named(tmp_path):
    from hub_upload.card import load_eval_results

    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "empty.json").write_text(json.dumps({"model": "x", "notes": ["no numbers"]}))
    (tmp_path / "list.json").write_text("[1, 2]")
    for name, message in [("broken.json", "not valid JSON"), ("empty.json", "no numeric metrics"),
                          ("list.json", "expected a JSON object")]:
        with pytest.raises(ValueError, match=message) as error:
            load_eval_results(tmp_path / name)
        assert name in str(error.value)
    # Benchmark name from the file when it says, numbers at any depth.
    (tmp_path / "pope.json").write_text(json.dumps({"benchmark": "pope", "f1": 0.8, "split": {"random": {"acc": 0.9}}}))
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in load_eval_results(tmp_path / "pope.json")}
    assert results == {("pope", "f1"): 0.8, ("pope", "split.random.acc"): 0.9}
