"""ament_python package definition of the vehicle runtime (colcon build in a ROS 2 workspace, or pip install -e .).

The offline training code (``labeldistill_training``: labeldistill-train, -synth, -nusc2bag, -bag-eval) is its own
distribution in ``training/`` (``pip install -e training``); ``make setup`` installs both.
"""
import os
from glob import glob

from setuptools import find_packages, setup

package_name = "labeldistill_ros"
share = os.path.join("share", package_name)

setup(
    name=package_name,
    version="0.1.0",
    # The vehicle runtime only: the offline training code is its own distribution (training/setup.py).
    packages=find_packages(include=[package_name, package_name + ".*"]),
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
        "test": ["pytest", "pytest-xdist", "pytest-timeout", "rosbags>=0.11", "ruff==0.17.6"],
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
            "labeldistill-bag-play = labeldistill_ros.bag.player:main",
        ],
    },
)
