"""Reproduce the default PICARD bundle (models/bundles/default) from synthetic phantoms.

Stages (each resumable; run them in order or ``all``)::

    python scripts/train_default_bundle.py train    [--minutes 40] [--out runs/default]
    python scripts/train_default_bundle.py evaluate [--out runs/default]
    python scripts/train_default_bundle.py install  [--out runs/default]

``train``: normal phantoms (lesions=0, fixed seeds, 0.4 mm pixels, CC/MLO, densities
0.2-0.8) -> :func:`models.train.train` (checkpoints in ``--out``; ``--resume`` continues).
``evaluate``: a validation set (seeds 5000+) picks the SEG threshold at 1 FP/volume; the
held-out test set (seeds 9000+, >= 20 volumes with one 5-30 mm mass each) gives the metrics
of every scoring variant with bootstrap CIs (:func:`models.evaluate.compare_methods`).
``install``: writes the card (threshold, metrics, data description) into the bundle and
copies it to ``models/bundles/default``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.phantom import make_phantom  # noqa: E402
from models.train import TrainConfig, train, write_bundle_from_checkpoint  # noqa: E402

logger = logging.getLogger("train_default_bundle")

SPACING = 0.4
TRAIN_SEEDS = range(1000, 1027)      # 27 normal volumes (last 3 held out for validation L1)
VAL_SEEDS = range(5000, 5010)        # 10 volumes with one mass: threshold selection
TEST_SEEDS = range(9000, 9020)       # 20 volumes with one mass: reported metrics
EVAL_SHAPE = dict(slices=24, rows=224, cols=160)
CONFIG = TrainConfig(window=64, hole=32, max_delta=8, stride=16, pixel_spacing_mm=SPACING,
                     ngf=8, ndf=8, batch_size=16, iterations=200_000, val_every=250,
                     checkpoint_every=250, val_windows=128, threads=1, seed=0, m=10,
                     metric="MCD_image")
TRAINING_TEXT = (
    "models.train on 27 normal synthetic DBT phantoms (models.phantom, lesions=0, seeds "
    "1000-1026, 16 slices, 224-512 x 160-400 px at 0.4 mm, CC and MLO, density 0.2-0.8; last 3 "
    "held out for the validation L1); WGAN-GP with the official loss weights; reduced CPU "
    "configuration: ngf=ndf=8, window 64, hole 32 (official 256/128 at ~0.1 mm: the same "
    "physical hole of ~12.8 mm), max hole jitter 8 px, stride 16, no dropout in training")


def normal_volumes() -> list[np.ndarray]:
    vols = []
    for s in TRAIN_SEEDS:
        r = np.random.default_rng(s)
        rows = int(r.integers(224, 513))
        cols = int(r.integers(160, 401))
        p = make_phantom(seed=s, lesions=0, slices=16, rows=rows, cols=cols,
                         pixel_spacing_mm=SPACING, view="MLO" if s % 3 == 0 else "CC",
                         density=float(r.uniform(0.2, 0.8)))
        vols.append(p.volume)
    return vols


def lesion_volumes(seeds: range) -> list:
    out = []
    for s in seeds:
        r = np.random.default_rng(s)
        out.append(make_phantom(seed=s, lesions=1, pixel_spacing_mm=SPACING,
                                view="MLO" if s % 3 == 0 else "CC",
                                density=float(r.uniform(0.2, 0.8)),
                                lesion_diameter_mm=(5.0, 30.0), **EVAL_SHAPE))
    return out


def eval_slices(exam) -> list[int]:
    """The mass's centre slice and one slice far from it (normal tissue)."""
    z = int(round(exam.lesions[0]["center_zyx"][0]))
    zs = exam.volume.shape[0]
    covered = np.flatnonzero(exam.lesion_mask.any(axis=(1, 2)))
    far = [k for k in range(zs) if covered.size == 0 or min(abs(k - covered)) >= 4]
    other = far[len(far) // 2] if far else (z + zs // 2) % zs
    return sorted({z, other})


def stage_train(out: Path, minutes: float, resume: bool) -> Path:
    cfg = CONFIG
    cfg.max_minutes = minutes
    t = time.time()
    vols = normal_volumes()
    logger.info("made %d normal volumes in %.0f s", len(vols), time.time() - t)
    return train(cfg, vols, out, resume=resume, progress=True,
                 card_extra={"training": TRAINING_TEXT})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["train", "evaluate", "install", "all"])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    ap.add_argument("--minutes", type=float, default=40.0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    if args.stage in ("train", "all"):
        stage_train(args.out, args.minutes, args.resume)
    if args.stage in ("evaluate", "all"):
        stage_evaluate(args.out, args.n_boot)
    if args.stage in ("install", "all"):
        stage_install(args.out)
    return 0


def _heatmaps(model, exams, slices_of) -> list[np.ndarray]:
    maps = []
    for exam in exams:
        idx = slices_of(exam)
        maps.append(np.stack([model.heatmap(np.clip(exam.volume[z], 0, 1)) for z in idx]))
    return maps


def _views(exams, slices_of) -> list:
    from models.evaluate import _SliceView

    return [_SliceView(e, slices_of(e)) for e in exams]


def stage_evaluate(out: Path, n_boot: int) -> dict:
    """Threshold on the validation set, metrics on the test set, baseline = initial bundle."""
    from models.evaluate import (bootstrap_metrics, compare_methods, evaluate_cases,
                                 format_table, sensitivity_at, threshold_for_fp_rate)
    from models.picard import Picard

    model = Picard.from_bundle(out / "bundle")
    t = time.time()
    val = lesion_volumes(VAL_SEEDS)
    val_cases = evaluate_cases(_heatmaps(model, val, eval_slices), _views(val, eval_slices))
    cands = [c.candidates for c in val_cases]
    threshold = threshold_for_fp_rate(cands, 1.0)
    val_sens = sensitivity_at(cands)
    logger.info("validation: threshold %.4f at 1 FP/volume, sensitivity %s (%.0f s)",
                threshold, val_sens, time.time() - t)
    test = lesion_volumes(TEST_SEEDS)
    result = compare_methods(model, test, m=model.card["M"], n_boot=n_boot, seed=0,
                             slices=eval_slices, progress=False, print_table=True,
                             keep_heatmaps=True)
    maps = result.pop("heatmaps")[f"MCD image (M={model.card['M']})"] if model.card["M"] == 10 \
        else _heatmaps(model, test, eval_slices)
    result.pop("slices")
    # pixel-level sensitivity/specificity of the binary SEG at the chosen threshold
    views = _views(test, eval_slices)
    tp = fp = fn = tn = 0
    for hm, v in zip(maps, views):
        inside = np.broadcast_to(v.breast_mask, hm.shape)
        pred = (hm > threshold) & inside
        truth = v.lesion_mask & inside
        tp += int((pred & truth).sum()); fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum()); tn += int((~pred & ~truth & inside).sum())
    seg = {"pixel_sensitivity": tp / max(tp + fn, 1), "pixel_specificity": tn / max(tn + fp, 1),
           "dice": 2 * tp / max(2 * tp + fp + fn, 1)}
    # baseline: the initial (untrained) bundle committed before this one, same test slices
    baseline = None
    initial = out / "initial_bundle"
    if initial.is_dir():
        init_model = Picard.from_bundle(initial)
        bcases = evaluate_cases(_heatmaps(init_model, test, eval_slices), views)
        baseline = bootstrap_metrics(bcases, n_boot=n_boot, seed=0)
        baseline.pop("_samples")
        print(format_table({"initial untrained bundle (MCD image, M=4)": baseline}))
    report = {"threshold": threshold, "threshold_fp_per_volume": 1.0,
              "validation_sensitivity": val_sens, "test": result, "seg_at_threshold": seg,
              "baseline_initial_bundle": baseline}
    (out / "evaluation.json").write_text(json.dumps(report, indent=1, default=float))
    (out / "evaluation.md").write_text(result["table"] + "\n")
    logger.info("evaluation written to %s", out / "evaluation.json")
    return report


def stage_install(out: Path) -> Path:
    """Card with threshold and metrics -> models/bundles/default."""
    from models.picard import Picard

    report = json.loads((out / "evaluation.json").read_text())
    model = Picard.from_bundle(out / "bundle")
    card = dict(model.card)
    test = report["test"]
    main_name = "MCD image (M=10)"
    card.update(
        version="0.1-synthetic",
        threshold=float(report["threshold"]),
        threshold_note=("lowest MCD_image score with <= 1 false-positive detection per volume "
                        f"on the validation phantoms (seeds {VAL_SEEDS.start}-{VAL_SEEDS.stop - 1}), "
                        "not on the test set"),
        training=TRAINING_TEXT,
        evaluation=(
            f"{len(TEST_SEEDS)} held-out synthetic phantoms (seeds {TEST_SEEDS.start}-"
            f"{TEST_SEEDS.stop - 1}, {EVAL_SHAPE['rows']}x{EVAL_SHAPE['cols']} px at 0.4 mm, "
            "one 5-30 mm mass each: round/lobulated/spiculated); per volume the mass's centre "
            "slice and one lesion-free slice are scored; pixels inside the breast; lesion "
            "level: local maxima (5 mm NMS), hit = inside mask or within the lesion radius; "
            "FP rates per 2-slice volume; 95% bootstrap CIs over volumes "
            f"(n={test['settings']['n_boot']}, seed 0)"),
        metrics={
            "test": test["methods"][main_name],
            "test_all_methods": test["methods"],
            "mcd_minus_single": test["paired"],
            "seg_at_threshold": report["seg_at_threshold"],
            "validation_sensitivity_at_fp": report["validation_sensitivity"],
            "baseline_initial_bundle": report["baseline_initial_bundle"],
            "table": test["table"],
        },
    )
    final = out / "bundle_final"
    model.save_bundle(final, card)
    dest = ROOT / "models" / "bundles" / "default"
    dest.mkdir(parents=True, exist_ok=True)
    for f in final.iterdir():
        shutil.copy2(f, dest / f.name)
    logger.info("installed %s -> %s", final, dest)
    return dest


if __name__ == "__main__":
    raise SystemExit(main())
