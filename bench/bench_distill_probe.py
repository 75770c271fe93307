"""Gradient probe of the distillation losses: does each KD term push the shared student parameters the same way
as the detection loss, and how hard?

On the first ``--batches`` training batches of a synthetic set (the same set, shared LiDAR teacher and label
encoder as ``bench/bench_distill.py``, trained or reused through its helpers), for every method of ``--methods``
(default: the four KD methods) the student stage runs one forward per batch and one backward *per loss term*
(``detection`` = heatmap focal + box L1, ``depth``, and each ``kd_*`` part of the method, every one with its
configured weight). The gradient of each term is taken w.r.t. four groups of shared student parameters:

==================  ==============================================================================
depth_net           depth net + view transform (LSS)
image_stem_stage1   image backbone stem (conv1, bn1) + first stage (layer1)
bev_trunk_stage1    BEV trunk stem + first stage (the map LabelDistill distils as ``trunk_first``)
head                detection head
==================  ==============================================================================

Per term and group it reports the norm of the gradient of the batch-mean loss and its cosine with the detection
gradient (plus ``kd_total``, the sum of the KD terms), at initialisation (the seeded student every method starts
from in the benchmark) and, with ``--checkpoint`` (a trained ``student.pt`` / ``final.pt`` / ``epoch_NNN.pt``),
after loading its weights (the distiller's weights too when it was trained with the same method). A cosine near
-1 means the term fights the detection loss on those parameters; a norm far above the detection's means it
dominates the update (before clipping). Writes ``bench/results/distill_probe.json`` and prints a table.

BatchNorm and dropout run in training mode (batch statistics, as in training; the dropout masks reseeded per
batch, the same in every method and phase); nothing is updated.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_distill import (METHODS, REPO, SIZES, base_overrides, default_work_dir, ensure_shared,  # noqa: E402
                           ensure_synth_set, parse_device, shared_checkpoints)

KD_METHODS = tuple(m for m in METHODS if m != "none")
GROUPS: dict[str, tuple[str, ...]] = {
    "depth_net": ("depth_net.", "view_transform."),
    "image_stem_stage1": ("backbone.conv1.", "backbone.bn1.", "backbone.layer1."),
    "bev_trunk_stage1": ("bev_encoder.trunk.conv1.", "bev_encoder.trunk.bn1.", "bev_encoder.trunk.stages.0."),
    "head": ("head.",),
}
"""Shared student parameter groups (prefixes of ``StudentDetector`` parameter names)."""


def group_params(student) -> dict[str, list]:
    out = {g: [p for n, p in student.named_parameters() if n.startswith(prefixes) and p.requires_grad]
           for g, prefixes in GROUPS.items()}
    empty = [g for g, ps in out.items() if not ps]
    if empty:
        raise RuntimeError(f"no student parameters in group(s) {empty}: the module names changed, update GROUPS")
    return out


def loss_terms(parts: dict) -> dict:
    """``detection`` (hm + reg), ``depth`` and each ``kd_*`` part of a StudentStage forward."""
    import torch

    terms = {"detection": parts["det_hm"] + parts["det_reg"]}
    if "depth" in parts:
        terms["depth"] = parts["depth"]
    for k, v in parts.items():
        if k.startswith("kd_") and torch.is_tensor(v) and v.requires_grad:
            terms[k] = v
    return terms


def probe(stage, batches: list, groups: dict[str, list], seed: int | None = None) -> dict:
    """Per term: mean loss value and, per group, the gradient of the batch-mean term (norm, cosine with the
    detection gradient, per-batch cosines). ``seed``: reseed torch before each batch's forward (the depth net's
    dropout draws the same masks in every method and phase)."""
    import torch

    flat_params = [p for ps in groups.values() for p in ps]
    sizes = {g: sum(p.numel() for p in ps) for g, ps in groups.items()}
    stage.train()
    acc: dict[str, dict[str, torch.Tensor]] = {}
    per_batch: dict[str, dict[str, list]] = {}
    values: dict[str, list] = {}
    for i, batch in enumerate(batches):
        if seed is not None:
            torch.manual_seed(seed * 1009 + i)
        _, parts = stage(batch)
        terms = loss_terms(parts)
        grads_b: dict[str, dict[str, torch.Tensor]] = {}
        for name, t in terms.items():
            gs = torch.autograd.grad(t, flat_params, retain_graph=True, allow_unused=True)
            flat = [(g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(gs, flat_params)]
            vec = torch.cat(flat)
            grads_b[name] = dict(zip(groups, torch.split(vec, list(sizes.values()))))
            values.setdefault(name, []).append(float(t.detach()))
        kd = [n for n in grads_b if n.startswith("kd_")]
        if kd:
            grads_b["kd_total"] = {g: sum(grads_b[n][g] for n in kd) for g in groups}
        for name, gg in grads_b.items():
            a = acc.setdefault(name, {g: torch.zeros_like(v) for g, v in gg.items()})
            for g, v in gg.items():
                a[g] += v / len(batches)
                per_batch.setdefault(name, {}).setdefault(g, []).append(_cos(v, grads_b["detection"][g]))
        del terms, parts, grads_b
    out = {}
    for name, gg in acc.items():
        out[name] = {"loss": sum(values[name]) / len(values[name]) if name in values else None,
                     "groups": {g: {"norm": float(v.norm()), "cos_det": _cos(v, acc["detection"][g]),
                                    "cos_det_per_batch": per_batch[name][g]} for g, v in gg.items()}}
    return out


def _cos(a, b) -> float | None:
    a, b = a.double(), b.double()
    na, nb = float(a.norm()), float(b.norm())
    if na == 0.0 or nb == 0.0 or not math.isfinite(na * nb):
        return None
    return max(-1.0, min(1.0, float((a @ b) / (na * nb))))


def table(method: str, phase: str, res: dict) -> str:
    head = f"{method} @ {phase}: gradient norm | cosine with the detection gradient, per parameter group"
    cols = list(GROUPS)
    lines = [head, f"{'term':<16}{'loss':>10}" + "".join(f"{g:>26}" for g in cols)]
    for name, r in res.items():
        cells = []
        for g in cols:
            c = r["groups"][g]
            cos = "   n/a" if c["cos_det"] is None else f"{c['cos_det']:+6.2f}"
            cells.append(f"{c['norm']:>17.3e} | {cos}")
        loss = "" if r["loss"] is None else f"{r['loss']:.4g}"
        lines.append(f"{name:<16}{loss:>10}" + "".join(cells))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "config/train/cpu_small.yaml"))
    ap.add_argument("--size", default="bench", choices=SIZES, help="synthetic set (default bench, as bench_distill)")
    ap.add_argument("--data", default=None, help="use this nuScenes-format set instead of the synthetic one")
    ap.add_argument("--work-dir", default=None, help="shared teacher / label encoder (default: bench_distill's)")
    ap.add_argument("--methods", nargs="+", default=list(KD_METHODS), choices=KD_METHODS)
    ap.add_argument("--batches", type=int, default=4, help="training batches probed (the first ones, fixed order)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0, help="student initialisation and batch order")
    ap.add_argument("--checkpoint", default=None, help="also probe after loading these student weights")
    ap.add_argument("--teacher-epochs", type=int, default=2, help="only when the shared teacher is missing")
    ap.add_argument("--label-encoder-epochs", type=int, default=1, help="only when the label encoder is missing")
    ap.add_argument("--max-iters", type=int, default=None, help="cap on the shared stages' steps per epoch")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--out", default=str(REPO / "bench/results/distill_probe.json"))
    ap.add_argument("--note", default=None, help="free text stored in the JSON (e.g. what the run proves)")
    args = ap.parse_args(argv)

    import torch

    from labeldistill_training.config import load_train_config
    from labeldistill_ros.model.checkpoint import read_payload
    from labeldistill_training.batch import batch_to
    from labeldistill_training.checkpoints import trainable_state_from_checkpoint
    from labeldistill_training.trainer import Trainer, seed_everything

    t0 = time.perf_counter()
    device = parse_device(args.device)
    data = Path(args.data) if args.data else ensure_synth_set(args.size)
    work = Path(args.work_dir) if args.work_dir else default_work_dir(args.size, args.data)
    base = base_overrides(data, work, args.batch_size, args.seed)
    shared = ensure_shared(Path(args.config), base, work, args.teacher_epochs, args.label_encoder_epochs,
                           args.max_iters, device)
    ckpt = read_payload(Path(args.checkpoint), "student") if args.checkpoint else None

    results: dict = {}
    group_sizes: dict = {}
    text = []
    for method in args.methods:
        over = {**base, "distill": {"method": method},
                "trainer": {**base["trainer"], "work_dir": str(work / "probe"), "seed": args.seed},
                "stages": {"student": shared_checkpoints(work)}}
        cfg = load_train_config(Path(args.config), over)
        trainer = Trainer(cfg, "student", device=device)
        seed_everything(args.seed)
        stage = trainer.build_stage().to(trainer.device)
        groups = group_params(stage.student)
        group_sizes = {g: sum(p.numel() for p in ps) for g, ps in groups.items()}
        seed_everything(args.seed)  # the same batches (and augmentation draws) for every method
        batches = []
        for batch in trainer.loader("train", 0):
            batches.append(batch_to(batch, trainer.device))
            if len(batches) >= args.batches:
                break
        print(f"[probe] {method}: {len(batches)} batch(es) of {args.batch_size}", flush=True)
        results[method] = {"init": probe(stage, batches, groups, args.seed)}
        text.append(table(method, "init", results[method]["init"]))
        print(text[-1], flush=True)
        if ckpt is not None:
            sd = trainable_state_from_checkpoint(ckpt)
            if not any(k.startswith("distiller.") for k in sd) or (ckpt.get("extra") or {}).get("method") != method:
                sd = {k: v for k, v in sd.items() if k.startswith("student.")}  # another method's adaptors: skip
            missing, unexpected = stage.trainable().load_state_dict(sd, strict=False)
            bad = [k for k in missing if k.startswith("student.")] + list(unexpected)
            if bad:
                raise SystemExit(f"--checkpoint {args.checkpoint} does not fit this student: {bad[:5]}")
            results[method]["checkpoint"] = probe(stage, batches, groups, args.seed)
            results[method]["checkpoint_distiller_loaded"] = not any(k.startswith("distiller.") for k in missing)
            text.append(table(method, "checkpoint", results[method]["checkpoint"]))
            print(text[-1], flush=True)
        del stage, batches

    cfg_path = Path(args.config).resolve()
    out = {"command": shlex.join(["python", "bench/bench_distill_probe.py",
                                  *(sys.argv[1:] if argv is None else argv)]),
           "note": args.note,
           "size": None if args.data else args.size, "data": str(data), "batches": args.batches,
           "batch_size": args.batch_size, "seed": args.seed, "checkpoint": args.checkpoint,
           "config": str(cfg_path.relative_to(REPO)) if cfg_path.is_relative_to(REPO) else str(cfg_path),
           "groups": {g: {"prefixes": list(GROUPS[g]), "params": n} for g, n in group_sizes.items()},
           "shared": shared, "device": str(device or ("cuda" if torch.cuda.is_available() else "cpu")),
           "methods": results, "wall_s": time.perf_counter() - t0, "table": "\n\n".join(text)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(args.out).with_name(Path(args.out).name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out} ({out['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
