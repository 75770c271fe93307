"""ament_python package definition (colcon build in a ROS 2 workspace, or pip install -e . here)."""
import os
from glob import glob

from setuptools import find_packages, setup

package_name = "labeldistill_ros"
share = os.path.join("share", package_name)

# training/ is installed under a distinct import name so it cannot collide in site-packages.
training_packages = ["labeldistill_training"] + [
    "labeldistill_training." + p for p in find_packages(where="training")
]

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(include=[package_name, package_name + ".*"]) + training_packages,
    package_dir={"labeldistill_training": "training"},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        (share, ["package.xml"]),
        (os.path.join(share, "launch"), glob("launch/*.launch.py")),
        (os.path.join(share, "config"), glob("config/*.yaml") + glob("config/*.rviz")),
        (os.path.join(share, "config", "dds"), glob("config/dds/*.xml")),
        (os.path.join(share, "config", "model"), glob("config/model/*.yaml")),
        (os.path.join(share, "config", "train"), glob("config/train/*.yaml")),
    ],
    install_requires=["setuptools", "numpy", "pyyaml", "torch>=2.1"],
    extras_require={
        # Offline training and evaluation (never needed on the vehicle).
        "train": [
            "nuscenes-devkit==1.2.0",
            "opencv-python-headless<4.12",
            "numpy<2",
            "rosbags>=0.11",
            "tqdm",
            "matplotlib",
            "tensorboard",  # training curves in the tool users already have (the CSV log stays)
        ],
        "test": ["pytest", "pytest-xdist", "pytest-timeout", "rosbags>=0.11"],
    },
    zip_safe=False,
    maintainer="labeldistill_ros maintainers",
    maintainer_email="maintainers@labeldistill-ros.invalid",
    description="Camera-only 3D object detection for ROS 2, trained by LiDAR-to-camera distillation.",
    license="Apache-2.0",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            "detector_node = labeldistill_ros.node.detector_node:main",
            "labeldistill-synth = labeldistill_training.synth.cli:main",
            "labeldistill-nusc2bag = labeldistill_training.tools.nusc2bag:main",
            "labeldistill-bag-eval = labeldistill_training.tools.bag_eval:main",
            "labeldistill-bag-play = labeldistill_ros.bag.player:main",
            "labeldistill-train = labeldistill_training.cli:main",
        ],
    },
)
