"""opens2s: OpenS2S (empathetic streaming speech-to-speech) on the Hugging Face stack.

The repository folders are installed under the single namespace `opens2s` (nothing generic at top level):
`modeling_opens2s/` -> `opens2s.modeling_opens2s`, `processing/` -> `opens2s.processing`, and so on.
"""

from setuptools import setup


SUBPACKAGES = [
    "modeling_opens2s",
    "conversion",
    "processing",
    "training",
    "spaces_app",
    "dataset_scripts",
    "evaluation",
    "serving",
]

extras = {
    "train": ["trl>=1.16", "peft>=0.21", "accelerate>=1.15", "datasets>=5.2"],
    "space": ["gradio>=6.31"],
    "data": ["datasets>=5.2"],
    # IFEval is scored by lm-eval's reference implementation (its `ifeval` extra: nltk, langdetect, immutabledict).
    "eval": ["datasets>=5.2", "jiwer>=4.0", "langdetect>=1.0.9", "lm-eval[ifeval]>=0.4.13"],
    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "websockets>=12", "silero-vad>=5.1"],
    "ray": ["ray[serve]>=2.40", "fastapi>=0.110", "uvicorn>=0.29", "websockets>=12"],
    "test": [
        "pytest>=8",
        "datasets>=5.2",
        "trl>=1.16",
        "peft>=0.21",
        "accelerate>=1.15",
        "jiwer>=4.0",
        "langdetect>=1.0.9",
        "lm-eval[ifeval]>=0.4.13",
        "gradio>=6.31",
        "playwright>=1.49",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "websockets>=12",
        "openai>=1.40",
        "httpx>=0.27",
        "silero-vad>=5.1",
        "ray[serve]>=2.40",
    ],
}

setup(
    name="opens2s",
    version="0.1.0",
    description="OpenS2S empathetic streaming speech-to-speech model, Hugging Face native",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["opens2s"] + [f"opens2s.{name}" for name in SUBPACKAGES],
    package_dir={"opens2s": "opens2s", **{f"opens2s.{name}": name for name in SUBPACKAGES}},
    package_data={
        "opens2s.processing": ["assets/*.wav"],
        "opens2s.training": ["accelerate_configs/*.yaml"],
        "opens2s.dataset_scripts": ["prompts/*.txt"],
    },
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "safetensors>=0.4",
        "huggingface-hub>=1.0",
        "numpy>=1.26",
        "soundfile>=0.12",
        "soxr>=0.3",
        "tqdm>=4.66",
        "pyyaml>=6.0",  # reading the original token2wav config.yaml
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["opens2s=opens2s.cli:main"]},
)
