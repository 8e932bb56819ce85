"""lsnet_tf: L-SNet (ICIP 2021) for Keras 3 / TensorFlow.

Ranges live here; the tested, fully pinned set is requirements.lock (install from it).
"""
from setuptools import find_packages, setup

INSTALL = [
    "tensorflow>=2.16,<2.17",
    "keras>=3.15,<3.16",
    "keras-hub==0.31.*",
    "pydicom>=3.0",
    "nibabel>=5",
    "numpy>=1.26,<2",
    "pyyaml>=6",
    "tensorboard>=2.16,<2.17",
    "pillow>=10",
    "matplotlib>=3.8",
    "scipy>=1.11",
]
VALIDATE = [
    "tensorflow-data-validation==1.16.1",
    "apache-beam[gcp]==2.61.0",
    "ipython",
]
# predict writes DICOM SEG with highdicom; devices run .tflite files with LiteRT alone
DEPLOY = ["highdicom==0.28.*", "ai-edge-litert>=2.3,<2.4"]
DEV = ["pytest>=8", "hypothesis>=6", "pydicom-data"]

setup(
    name="lsnet_tf",
    version="0.1.0",
    description="L-SNet: region localization to scale-invariant medical image segmentation (Keras 3 / TF)",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["lsnet_tf", "lsnet_tf.*"]),
    package_data={"lsnet_tf": ["py.typed"]},
    install_requires=INSTALL,
    extras_require={"validate": VALIDATE, "deploy": DEPLOY, "dev": DEV, "all": VALIDATE + DEPLOY + DEV},
)
