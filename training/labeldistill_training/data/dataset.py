"""Torch Dataset over nuScenes infos: multi-camera images with image augmentation, camera geometry, one BEV
augmentation shared by boxes, points and geometry, multi-sweep LiDAR, per-camera depth targets, previous key frames.

Frames and matrices (all 4x4 map column vectors, ``p_b = T_a2b @ p_a``):

* **key ego**: the ego frame at the sample's LIDAR_TOP key frame (``info["ego2global"]``); boxes, points and the
  current frame's ``cam2ego`` are expressed in it, *before* the BEV augmentation ``bda``. Each previous frame's
  ``cam2ego`` is expressed in *that* frame's own key ego (each camera compensated to its frame's LiDAR key time,
  as the current frame is), and ``prev2curr`` maps it into the current key ego: the node lifts every camera set
  once in its own ego frame and warps the kept BEV feature with ``prev2curr``, and training does the same.
  The network's frustum geometry is ``bda @ cam2ego @ K^-1 @ ida^-1``; ``gt_boxes`` and ``points`` are returned
  after ``bda`` so that all three agree.
* ``ida`` maps original-image pixels ``[u, v, 1, 1]`` (pixel centres at integers) to network-input pixels; the
  returned image *is* the original warped by exactly this matrix (the model's
  :class:`~labeldistill_ros.model.image_transform.ImageTransform`, the node's too), so projection through
  ``ida @ K`` lands on the image content.

Sample dict (F = 1 + len(prev_key_offsets) frames, current first; N cameras; (H, W) = ``final_dim``):

=============  =========================  ==========================================================
key            shape / type               meaning
=============  =========================  ==========================================================
imgs           (F, N, 3, H, W) float32    normalised RGB images (:class:`ImageTransform`)
K              (F, N, 3, 3) float32       intrinsics of the original images (pixels)
cam2ego        (F, N, 4, 4) float32       camera -> that frame's own key ego (pre-bda)
prev2curr      (F-1, 4, 4) float32        previous key ego -> current key ego, ``inv(cur ego2global) @ prev
                                          ego2global`` (identity where the frame is clamped to the current one)
ida            (F, N, 4, 4) float32       image augmentation (same per camera across frames)
bda            (4, 4) float32             BEV augmentation (identity when not training)
gt_boxes       (M, 9) float32             x, y, z, l, w, h, yaw, vx, vy in key ego after bda
gt_labels      (M,) int64                 indices into ``config.classes``
points         (P, 5) float32             x, y, z (key ego, after bda), intensity, time lag (s)
depth          (N, H/s, W/s) float32      min LiDAR depth (m) per stride-s cell of the current frame, 0 = none
ego2global     (4, 4) float64             key ego pose (for converting detections to results)
frame_dt       (F,) float32               key time minus frame time (s)
sample_token   str
frame_tokens   list[str] (F)
=============  =========================  ==========================================================

``points`` / ``depth`` are absent when disabled in the config. Random augmentation draws from
``default_rng([seed, epoch, index])``: deterministic for any number of DataLoader workers.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from labeldistill_ros import geometry as geo
from labeldistill_ros.model.image_transform import ImageTransform, ida_for

from .config import DataConfig
from .infos import get_infos


class NuScenesDataset(Dataset):
    """Camera (+ LiDAR) samples of one split.

    Args:
        config: validated :class:`~.config.DataConfig`.
        infos: records of :func:`~.infos.create_infos` for the split, in scene/time order.
        training: random image/BEV augmentation (if enabled in the config); otherwise the deterministic
            evaluation transform and ``bda`` = identity.
        seed: augmentation seed.
    """

    def __init__(self, config: DataConfig, infos: list[dict], training: bool = False, seed: int = 0):
        self.config = config
        self.infos = infos
        self.training = bool(training)
        self.seed = int(seed)
        self.epoch = 0
        self._index = {info["sample_token"]: i for i, info in enumerate(infos)}
        self._class_index = {c: i for i, c in enumerate(config.classes)}
        # The model's one image transform (the node runs the same): evaluation ida, pixel warp, normalisation.
        self.transform = ImageTransform(config.image_aug.final_dim, config.image_transform_config())
        # OpenCV's thread pool is not fork-safe: a forked DataLoader worker that touches it (cv2.setNumThreads,
        # sometimes any parallel call) can deadlock on the parent's pool state. One OpenCV thread in every
        # process that holds a dataset avoids that; workers parallelise the decoding instead.
        cv2.setNumThreads(1)

    @classmethod
    def from_config(cls, config: DataConfig, split: str = "train", training: bool | None = None, seed: int = 0,
                    nusc=None) -> "NuScenesDataset":
        """Dataset of ``split``: 'train' / 'val' (the config's split names) or any split name.

        ``training`` defaults to ``split == 'train'``. Infos are cached under ``config.info_cache_dir``.
        """
        name = {"train": config.train_split, "val": config.val_split}.get(split, split)
        infos = get_infos(config.dataroot, config.version, name, cache_dir=config.info_cache_dir,
                          max_sweeps=max(10, config.lidar_sweeps), nusc=nusc)
        return cls(config, infos, training=(split == "train") if training is None else training, seed=seed)

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation stream (call before creating the epoch's DataLoader iterator)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.infos)

    # ------------------------------------------------------------------------------------------------------------
    # Augmentation parameters
    # ------------------------------------------------------------------------------------------------------------
    def sample_ida(self, rng: np.random.Generator | None, width: int, height: int) -> np.ndarray:
        """``(4, 4)`` image augmentation for a ``width x height`` source image (BEVDepth's sampling rules,
        :func:`labeldistill_ros.model.image_transform.ida_for`).

        Training (rng given and augmentation enabled): resize = fit x U(resize_lim), bottom crop from
        U(bot_pct_lim), random horizontal crop, flip with p = 0.5, rotation U(rot_lim). Otherwise the model's
        evaluation transform (:attr:`transform`): resize = fit x test_resize, bottom crop at the mean of
        bot_pct_lim, centred horizontally, no flip/rotation: exactly what the node runs.
        """
        if rng is None or not self.config.image_aug.enabled:
            return self.transform.ida(width, height)
        a = self.config.image_aug
        fH, fW = a.final_dim
        resize_scale = rng.uniform(*a.resize_lim)
        new_w = int(width * max(fH / height, fW / width) * resize_scale)
        bottom_crop = rng.uniform(*a.bot_pct_lim)
        left = int(rng.uniform(0, max(0, new_w - fW)))
        flip = bool(a.rand_flip and rng.random() < 0.5)
        rot = float(rng.uniform(*a.rot_lim))
        return ida_for(width, height, a.final_dim, resize_scale, bottom_crop, left, flip, rot)

    def sample_bda(self, rng: np.random.Generator | None) -> np.ndarray:
        """``(4, 4)`` BEV augmentation: rotation U(rot_lim) deg, scale U(scale_lim), x/y flips; identity when
        not training."""
        b = self.config.bev_aug
        if rng is None or not b.enabled:
            return np.eye(4)
        rot = np.deg2rad(rng.uniform(*b.rot_lim))
        scale = rng.uniform(*b.scale_lim)
        flip_x = bool(rng.random() < b.flip_x_prob)
        flip_y = bool(rng.random() < b.flip_y_prob)
        return geo.bev_aug_matrix(rot, scale, flip_x, flip_y)

    # ------------------------------------------------------------------------------------------------------------
    # Loading
    # ------------------------------------------------------------------------------------------------------------
    def frame_infos(self, idx: int) -> list[dict]:
        """Infos of the current sample and its previous key frames (``prev_key_offsets``), clamped to the first
        sample of the scene (or the oldest one present in this dataset)."""
        cur = self.infos[idx]
        out = [cur]
        for off in self.config.prev_key_offsets:
            info = cur
            for _ in range(-off):
                j = self._index.get(info["prev_sample_token"])
                if j is None:
                    break
                info = self.infos[j]
            out.append(info)
        return out

    def _path(self, rel: str) -> str:
        return os.path.join(self.config.dataroot, rel)

    def load_image(self, rel_path: str) -> np.ndarray:
        """``(H, W, 3)`` uint8 **RGB** image (raises if unreadable)."""
        img = cv2.imread(self._path(rel_path), cv2.IMREAD_COLOR)
        if img is None:
            raise FileNotFoundError(f"cannot read image {self._path(rel_path)}")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def load_lidar(self, rel_path: str) -> np.ndarray:
        """``(P, 5)`` float32 x, y, z (LiDAR frame), intensity, ring of a ``.pcd.bin`` file."""
        pts = np.fromfile(self._path(rel_path), dtype=np.float32)
        return pts.reshape(-1, 5)

    def lidar_points(self, info: dict, key_cloud: np.ndarray | None = None) -> np.ndarray:
        """``(P, 5)`` x, y, z in the key ego frame (pre-bda), intensity, time lag (s): the key cloud plus up to
        ``lidar_sweeps`` previous sweeps; returns within ``point_min_radius`` of the sensor are dropped.
        ``key_cloud``: the already loaded key-frame cloud (saves a read)."""
        key_g2e = geo.invert_transform(info["ego2global"])
        out = []
        for i, rec in enumerate([info["lidar"]] + list(info["sweeps"][: self.config.lidar_sweeps])):
            pts = key_cloud if (i == 0 and key_cloud is not None) else self.load_lidar(rec["path"])
            pts = pts[np.hypot(pts[:, 0], pts[:, 1]) >= self.config.point_min_radius]
            T = key_g2e @ rec["ego2global"] @ rec["lidar2ego"]
            xyz = geo.transform_points(T, pts[:, :3])
            dt = np.full((len(pts), 1), (info["timestamp"] - rec["timestamp"]) * 1e-6)
            out.append(np.concatenate([xyz, pts[:, 3:4], dt], axis=1))
        return np.concatenate(out, axis=0).astype(np.float32)

    def depth_target(self, info: dict, cam: dict, ida: np.ndarray, key_pts: np.ndarray) -> np.ndarray:
        """``(H/s, W/s)`` float32: minimum optical depth (m) of the key-frame LiDAR points falling in each stride-s
        cell of the augmented image of camera ``cam`` (0 = no point).

        Points go LiDAR -> ego (LiDAR time) -> global -> ego (camera time) -> camera, are projected with K and
        moved by ``ida``; depths outside [min_depth, max_depth] are ignored.
        """
        d = self.config.depth
        fH, fW = self.config.image_aug.final_dim
        s = d.stride
        h, w = -(-fH // s), -(-fW // s)
        lidar = info["lidar"]
        T = geo.invert_transform(cam["ego2global"]) @ lidar["ego2global"] @ lidar["lidar2ego"]
        uv, z = geo.project_points(geo.transform_points(T, key_pts[:, :3]), cam["cam2ego"], cam["K"])
        uv = uv @ ida[:2, :2].T + ida[:2, 3]
        cu = np.floor((uv[:, 0] + 0.5) / s)
        cv = np.floor((uv[:, 1] + 0.5) / s)
        ok = ((z >= d.min_depth) & (z <= d.max_depth) & (uv[:, 0] >= -0.5) & (uv[:, 0] < fW - 0.5)
              & (uv[:, 1] >= -0.5) & (uv[:, 1] < fH - 0.5))
        cell = (cv[ok] * w + cu[ok]).astype(np.int64)
        zz = z[ok]
        out = np.zeros(h * w, dtype=np.float32)
        if len(cell):
            order = np.lexsort((zz, cell))  # by cell, then depth: the first of each cell is its minimum
            cell, zz = cell[order], zz[order]
            first = np.ones(len(cell), dtype=bool)
            first[1:] = cell[1:] != cell[:-1]
            out[cell[first]] = zz[first]
        return out.reshape(h, w)

    def ground_truth(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(M, 9)`` boxes (key ego, pre-bda) and ``(M,)`` labels after the class and point filters."""
        names = info["gt_names"]
        npts = np.asarray(info["num_lidar_pts"]) + np.asarray(info["num_radar_pts"])
        keep = [i for i, n in enumerate(names) if n in self._class_index and npts[i] >= self.config.min_lidar_pts]
        boxes = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, 9)[keep]
        labels = np.array([self._class_index[names[i]] for i in keep], dtype=np.int64)
        return boxes, labels

    # ------------------------------------------------------------------------------------------------------------
    def __getitem__(self, idx: int) -> dict:
        cfg = self.config
        rng = np.random.default_rng([self.seed, self.epoch, int(idx)]) if self.training else None
        frames = self.frame_infos(idx)
        info = frames[0]
        frame_g2e = [geo.invert_transform(fr["ego2global"]) for fr in frames]  # global -> each frame's key ego
        F, N = len(frames), len(cfg.cameras)
        # previous key ego -> current key ego; exactly the identity for a frame clamped to the current one
        prev2curr = np.array([np.eye(4) if fr["sample_token"] == info["sample_token"]
                              else frame_g2e[0] @ np.asarray(fr["ego2global"], dtype=np.float64)
                              for fr in frames[1:]], dtype=np.float64).reshape(F - 1, 4, 4)
        fH, fW = cfg.image_aug.final_dim
        imgs = np.zeros((F, N, 3, fH, fW), dtype=np.float32)
        Ks = np.zeros((F, N, 3, 3))
        c2e = np.zeros((F, N, 4, 4))
        idas = np.zeros((F, N, 4, 4))
        for c, ch in enumerate(cfg.cameras):
            ida = None
            for f, fr in enumerate(frames):
                cam = fr["cams"][ch]
                img = self.load_image(cam["path"])
                if ida is None:  # one augmentation per camera, shared by all frames
                    ida = self.sample_ida(rng, img.shape[1], img.shape[0])
                imgs[f, c] = self.transform(img, ida).numpy()
                Ks[f, c] = cam["K"]
                c2e[f, c] = frame_g2e[f] @ cam["ego2global"] @ cam["cam2ego"]
                idas[f, c] = ida
        bda = self.sample_bda(rng)
        boxes, labels = self.ground_truth(info)
        sample = {
            "imgs": torch.from_numpy(imgs),
            "K": torch.from_numpy(Ks.astype(np.float32)),
            "cam2ego": torch.from_numpy(c2e.astype(np.float32)),
            "ida": torch.from_numpy(idas.astype(np.float32)),
            "bda": torch.from_numpy(bda.astype(np.float32)),
            "gt_boxes": torch.from_numpy(geo.transform_boxes(boxes, bda).astype(np.float32).reshape(-1, 9)),
            "gt_labels": torch.from_numpy(labels),
            "prev2curr": torch.from_numpy(prev2curr.astype(np.float32)),
            "ego2global": torch.from_numpy(np.asarray(info["ego2global"], dtype=np.float64)),
            "frame_dt": torch.tensor([(info["timestamp"] - fr["timestamp"]) * 1e-6 for fr in frames],
                                     dtype=torch.float32),
            "sample_token": info["sample_token"],
            "frame_tokens": [fr["sample_token"] for fr in frames],
        }
        need_key_cloud = cfg.depth.enabled or cfg.load_points
        key_cloud = self.load_lidar(info["lidar"]["path"]) if need_key_cloud else None
        if cfg.load_points:
            pts = self.lidar_points(info, key_cloud)
            pts[:, :3] = geo.transform_points(bda, pts[:, :3])
            sample["points"] = torch.from_numpy(pts.astype(np.float32))
        if cfg.depth.enabled:
            sample["depth"] = torch.from_numpy(np.stack([
                self.depth_target(info, info["cams"][ch], idas[0, c], key_cloud)
                for c, ch in enumerate(cfg.cameras)]))
        return sample


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (avoids oversubscribing the cores).

    OpenCV is already single-threaded (set in the parent by :class:`NuScenesDataset` before any fork; setting it
    first in a forked worker can deadlock on the parent's pool state).
    """
    torch.set_num_threads(1)


def build_dataloader(dataset: NuScenesDataset, batch_size: int, num_workers: int = 0, shuffle: bool | None = None,
                     drop_last: bool = False, generator: torch.Generator | None = None,
                     persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader with :func:`~.collate.collate_batch` and fork-safe worker set-up.

    ``shuffle`` defaults to ``dataset.training``.
    """
    from .collate import collate_batch

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=dataset.training if shuffle is None else shuffle,
        num_workers=num_workers, collate_fn=collate_batch, worker_init_fn=worker_init if num_workers else None,
        drop_last=drop_last, generator=generator, persistent_workers=persistent_workers and num_workers > 0)
