"""prunekit: structured pruning for BERT-family encoders that ends in a faster, exported model.

`kernels/` and `export/` live at the top of the repository but install as `prunekit.kernels` and
`prunekit.export`, so no generic top-level names land in a user's site-packages.
Install torch first (`pip install torch==2.13.0`): an unpinned torch resolves to a multi-GB CUDA
build on machines that only need the CPU one. The Makefile does this in the right order.
"""
from setuptools import setup

# onnxruntime-gpu (the design's runtime; its wheel also runs the CPU provider) exists only for
# Linux x86_64 and Windows AMD64; everywhere else take plain onnxruntime of the same release.
ORT_GPU_PLATFORMS = ('(sys_platform == "linux" and platform_machine == "x86_64") or '
                     '(sys_platform == "win32" and platform_machine == "AMD64")')
ORT_CPU_PLATFORMS = ('(sys_platform != "linux" or platform_machine != "x86_64") and '
                     '(sys_platform != "win32" or platform_machine != "AMD64")')
# a second runtime for the same model.onnx (what many Intel-CPU deployments run); its wheel is 59 MB
# for CPython 3.11 x86_64, so the dev extra takes it too and CI tests it instead of skipping
OPENVINO = "openvino==2026.4.1"

setup(
    name="prunekit",
    version="0.1.0",
    description="Structured pruning (CoFi, post-training) for BERT encoders, with exact surgery and ONNX export",
    python_requires=">=3.10",
    packages=["prunekit", "prunekit.posttrain", "prunekit.cofi", "prunekit.kernels", "prunekit.export"],
    package_dir={"prunekit": "prunekit", "prunekit.kernels": "kernels", "prunekit.export": "export"},
    install_requires=[
        "torch==2.13.0",
        "triton==3.7.1",  # the version torch 2.13's CUDA wheel pins
        "transformers==5.23.0",
        "tokenizers==0.23.3",
        "safetensors==0.8.0",
        "numpy==2.4.6",
        "tqdm==4.70.1",
        "onnx==1.23.2",
        "onnxscript==0.7.2",
        f"onnxruntime-gpu==1.31.1; {ORT_GPU_PLATFORMS}",
        f"onnxruntime==1.31.1; {ORT_CPU_PLATFORMS}",
        "datasets==5.2.0",
        "matplotlib==3.11.2",
    ],
    extras_require={"openvino": [OPENVINO],
                    "dev": ["pytest==9.2.0", "scipy==1.17.1", "scikit-learn==1.9.1", OPENVINO]},
    entry_points={"console_scripts": ["prunekit = prunekit.cli:main"]},
)
