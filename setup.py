"""Install the LLaVA project: the model as transformers remote code plus the tools around it."""

from setuptools import setup

CORE = [
    # torch: any CPU/GPU build from 2.4 on; the README pins the 2.13.0 CPU wheel for offline machines.
    "torch>=2.4",
    "transformers>=5.24,<6",
    "trl>=1.16,<2",
    "peft>=0.21,<1",
    "accelerate>=1.10",
    "datasets>=4",
    "safetensors>=0.5",
    "huggingface_hub>=1.0",
    "pillow>=10",
    "numpy>=1.26",
    "pyyaml>=6",
    # OS file locks on resumable outputs (`processing.jsonl_store.ResumableJsonl`); already a dependency of datasets.
    "filelock>=3.12",
    # Reads the GGUF checkpoint of the embedded default LLM (SmolLM2) and any user GGUF file.
    "gguf>=0.10",
    # Training UX: TensorBoard is the default `report_to`; matplotlib draws loss curves and reports.
    "tensorboard>=2.15",
    "matplotlib>=3.7",
]

EXTRAS = {
    # Real photos for the demo and tests (skimage.data ships them inside the wheel).
    "demo": ["scikit-image>=0.22", "gradio>=5"],
    "datagen": ["openai>=1.40", "tenacity>=8"],
    # lmms-eval is not in `dev`: it pulls torchvision and dozens of task libraries (and, without a
    # torch pin, a newer CUDA torch); its plugin test runs only where it is installed.
    "eval": ["openai>=1.40", "lmms-eval>=0.7"],
    "dev": [
        "pytest>=8",
        # Property-based fuzzing of the data path (tests/test_fuzz_data.py).
        "hypothesis>=6.100",
        "import-linter>=2.1",  # `|` (independent siblings) in layers contracts
        "scikit-image>=0.22",
        "openai>=1.40",
        "tenacity>=8",
        # Web demo and its browser test (Playwright drives Debian's chromium; it downloads no browser).
        "gradio>=5",
        "playwright>=1.40",
        # transformers' own common tests (tests/test_transformers_common.py) import them.
        "parameterized>=0.9",
        "httpx>=0.27",
        # ...and run against the release they come from: ../shared/transformers-tests is transformers 5.24's suite,
        # whose test_modeling_common imports testing_utils names that 5.25 removed (`preserve_module_forwards`).
        # Users keep CORE's range; the test environment stays on the suite's release.
        "transformers>=5.24,<5.25",
    ],
}

setup(
    name="llava-transformers",
    version="0.1.0",
    description="LLaVA (Visual Instruction Tuning) as transformers remote code, trained with TRL",
    python_requires=">=3.10",
    packages=[
        "modeling_llava",
        "processing",
        "processing.templates",
        "training",
        "hub_upload",
        "datagen",
        "evaluation",
        "inference",
        "demo",
        "llava_cli",
    ],
    package_data={
        "processing.templates": ["*.jinja"],
        "training": ["configs/*.yaml", "configs/accelerate/*.yaml"],
        "datagen": ["prompts/*", "data/*"],
        "demo": ["configs/*.yaml"],
    },
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": ["llava=llava_cli.main:main"],
        # lmms-eval finds our model through this group: `lmms-eval --model llava_remote ...`.
        "lmms_eval.models": ["llava_remote = evaluation.lmms_eval_plugin:manifest"],
    },
)
