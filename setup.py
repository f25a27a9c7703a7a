from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="openmatch",
    version="0.1.0",
    description="Dense retrieval toolkit: train, index, search and evaluate bi-encoders on MS MARCO-style data",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    packages=find_packages(include=["openmatch", "openmatch.*"]),
    python_requires=">=3.10",
    # torch is deliberately unpinned: install the build that fits your machine (CPU or CUDA) first.
    install_requires=[
        "torch>=2.2",
        "transformers>=5.0,<6",
        "accelerate>=1.0",
        "numpy>=1.24",
        "tqdm>=4.60",
        "tensorboard>=2.14",
        "safetensors>=0.4",
        # trec_eval's C code: the evaluation measures are computed by it, not re-implemented.
        "pytrec-eval-terrier>=0.5.6",
        # evaluate --baseline: the paired t-test (scipy.stats.ttest_rel).
        "scipy>=1.9",
    ],
    # One command per driver and script; `python -m openmatch.driver.X` and `python scripts/msmarco/X.py` run the same
    # functions.
    entry_points={
        "console_scripts": [
            "openmatch-train-dr = openmatch.driver.train_dr:main",
            "openmatch-build-index = openmatch.driver.build_index:main",
            "openmatch-retrieve = openmatch.driver.retrieve:main",
            "openmatch-evaluate = openmatch.driver.evaluate:main",
            "openmatch-build-train = openmatch.driver.build_train:main",
            "openmatch-build-hn = openmatch.driver.build_hn:main",
            "openmatch-bm25 = openmatch.driver.bm25:main",
            "openmatch-fuse = openmatch.driver.fuse:main",
        ],
    },
    extras_require={
        # faiss-cpu and faiss-gpu both install the module ``faiss``: two of them shadow each other, so the search
        # backend is an extra and exactly one is chosen (scripts/setup.sh picks cpu unless a faiss is present).
        "cpu": ["faiss-cpu>=1.8"],
        "gpu": ["faiss-gpu>=1.8"],
        # The bm25 command and api.bm25_index: BM25 in pure Python (bm25s) with Snowball/Porter stemming.
        "bm25": ["bm25s>=0.2", "PyStemmer>=2.2"],
        # LoRA adapters for decoder LLM backbones (--lora, docs/llm-retriever.md).
        "lora": ["peft>=0.13"],
        "test": ["pytest>=8", "ir-measures>=0.3", "bm25s>=0.2", "PyStemmer>=2.2", "peft>=0.13"],
        "dev": ["pytest>=8", "ir-measures>=0.3", "bm25s>=0.2", "PyStemmer>=2.2", "peft>=0.13"],
    },
)
