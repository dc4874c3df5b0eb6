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
    ],
    entry_points={"console_scripts": ["cmgan=pipeline.cli:main"]},
)
