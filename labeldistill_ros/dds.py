"""Fast DDS environment for processes that exchange camera images.

Two shipped profiles (``config/dds/``), two separate concerns:
  * ``local``   loopback-only discovery and transport + 128 MiB shared memory: nothing leaves the host
                (tests, benchmarks, single-machine replay).
  * ``vehicle`` 128 MiB shared memory + normal UDP discovery: large images between processes on one
                computer, detections still visible to the vehicle network.

Fast DDS reads the profile when a participant is created, so apply the environment before ``rclpy.init``
(in this process) or pass it to child processes.
"""
from __future__ import annotations

import os

from .resources import share_file

PROFILES = {"local": "fastdds_local.xml", "vehicle": "fastdds_vehicle_shm.xml"}
# The variable naming the profile file changed with Fast DDS 3.0: Humble (Fast DDS 2.6) and Jazzy (2.14) read only
# FASTRTPS_DEFAULT_PROFILES_FILE, Kilted and newer (3.x) only FASTDDS_DEFAULT_PROFILES_FILE. Both are set, so the
# profile takes effect whatever the distribution (ROS_DISTRO is not set everywhere, e.g. with the pip wheels).
PROFILE_FILE_VARS = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")


def dds_environment(profile: str = "local", domain_id: int | None = None) -> dict[str, str]:
    """Environment variables selecting a shipped Fast DDS profile (and optionally a ROS domain id 0-101)."""
    if profile not in PROFILES:
        raise ValueError(f"dds profile '{profile}' is unknown: use one of {sorted(PROFILES)}")
    path = str(share_file("config", "dds", PROFILES[profile]))
    env = {
        "RMW_IMPLEMENTATION": "rmw_fastrtps_cpp",
        **{var: path for var in PROFILE_FILE_VARS},
        # LOCALHOST would make rmw_fastrtps replace the profile's transports with its own small ones.
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "SYSTEM_DEFAULT",
    }
    if domain_id is not None:
        if not 0 <= int(domain_id) <= 101:
            raise ValueError(f"ROS_DOMAIN_ID {domain_id} is out of range: use 0-101")
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    return env


def apply_dds_environment(profile: str = "local", domain_id: int | None = None) -> dict[str, str]:
    """Set :func:`dds_environment` in ``os.environ`` (before rclpy creates a participant) and return it."""
    env = dds_environment(profile, domain_id)
    os.environ.update(env)
    return env
