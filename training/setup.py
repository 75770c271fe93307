"""The offline training distribution ``labeldistill_training`` (import name = folder name: ``labeldistill_training/``
beside this file), kept apart from the vehicle runtime ``labeldistill_ros`` (the repository root's package).

* here: ``make setup`` installs both editable (``pip install -e . -e training``);
* a vehicle's ``colcon build`` (with or without ``--symlink-install``) builds only the root package: this folder
  holds a ``COLCON_IGNORE``, and the runtime never imports the training code;
* a training machine: ``pip install ./training`` (or ``-e``) next to the runtime package.

The import name cannot collide in site-packages (no top-level ``training`` package is installed).
"""
from setuptools import find_packages, setup

setup(
    name="labeldistill_training",
    version="0.1.0",
    packages=find_packages(include=["labeldistill_training", "labeldistill_training.*"]),
    install_requires=[
        "labeldistill_ros",
        "nuscenes-devkit==1.2.0",
        "opencv-python-headless<4.12",
        "numpy<2",
        "rosbags>=0.11",
        "tqdm",
        "matplotlib",
        "tensorboard",  # training curves in the tool users already have (the CSV log stays)
    ],
    python_requires=">=3.10",
    description="Offline training of labeldistill_ros: LiDAR teacher, label encoder, distilled camera student, "
                "nuScenes evaluation and rosbag tools.",
    license="Apache-2.0",
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "labeldistill-synth = labeldistill_training.synth.cli:main",
            "labeldistill-nusc2bag = labeldistill_training.tools.nusc2bag:main",
            "labeldistill-bag-eval = labeldistill_training.tools.bag_eval:main",
            "labeldistill-train = labeldistill_training.cli:main",
        ],
    },
)
