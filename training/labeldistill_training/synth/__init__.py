"""Synthetic nuScenes-format world writer.

A seeded generator of driving scenes (straight multi-lane road, moving ego, the ten nuScenes detection classes)
that renders six camera images per key frame, ray-casts a 32-beam spinning LiDAR, and writes every nuScenes
table so that ``nuscenes-devkit`` loads and scores the result like real data. Entry point:
``labeldistill-synth --size tiny|demo|bench --seed N --out DIR`` (:mod:`.cli`), or :func:`.generate.generate`.
"""
