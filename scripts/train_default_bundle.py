"""Reproduce the default PICARD bundle (models/bundles/default) on the realistic phantoms.

Stages (each resumable; run them in order or ``all``)::

    python scripts/train_default_bundle.py train    [--minutes 60] [--out runs/default]
                                                    [--init-from models/bundles/default]
                                                    [--device cpu|cuda] [--ngf 8 --ndf 8]
    python scripts/train_default_bundle.py evaluate [--out runs/default] [--stride 16]
    python scripts/train_default_bundle.py install  [--out runs/default]

``train``: normal phantoms of the realistic generator (:func:`models.lab.phantom.make_phantom`,
``lesions=0``) at the card's 0.4 mm: seeds 1000-1039, BI-RADS density a-d and view CC/MLO
drawn from the seed; even seeds a real-size breast (size and compressed thickness drawn from
the population ranges, a 16-slice slab of it, about 362 x 272 px), odd seeds a breast fitted
into a 224-320 x 160-240 px field of view as in the evaluation volumes; 16 slices each (each
volume takes 1-2 s to make). The last 4 are held out for the validation L1 that picks the
checkpoint. -> :func:`models.lab.train.train` (checkpoints in ``--out``; ``--resume``
continues; ``--init-from BUNDLE`` warm-starts from a bundle of the same architecture).

``evaluate``: the exams are built exactly as ``picard-node evaluate`` builds them
(:func:`models.lab.evaluate.synthetic_exams`: one 5-30 mm mass per volume, view and density
from the seed, ``--slices/--rows/--cols`` 24 x 224 x 160 by default). On the validation
volumes (seeds 5000+, ``--validation-count``) every PICARD scoring rule is scored on whole
volumes at each dropout p of ``--p-grid`` (:func:`models.lab.evaluate.select_rule_on_validation`)
and the best rule, p and its threshold at 1 FP/volume are chosen; the test volumes (seeds
9000+, ``--count``) are then scored once with :func:`models.lab.evaluate.compare_methods` at
the chosen p (best trivial baseline chosen on the same validation volumes). With
``--compare-with BUNDLE`` (default: the shipped ``models/bundles/default``) the same
validation selection is run for that bundle, and ``evaluation.json`` says whether the new
candidate's chosen rule beats it on validation (``--compare-with none``: no comparison, e.g.
the shipped weights re-selected at another ``--stride``). Test seeds never influence a choice.

``choose``: ``<out>/bundle_chosen``, the candidate with the chosen rule, p, threshold in its
card, for ``picard-node evaluate --model <out>/bundle_chosen`` (the test run of issue 10).

``install``: writes the card (version, training text, chosen rule/p/threshold, metrics of
the test run) and copies the bundle to ``models/bundles/default`` -- only when the candidate
beat the compared bundle on validation (``--force`` to install anyway).

On a CUDA machine see ``scripts/train_default_bundle_gpu.sh`` (official width ngf = ndf = 32,
in resumable parts of under 10 minutes).
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

from models.lab.phantom import make_phantom
from models.lab.train import TrainConfig, train

logger = logging.getLogger("train_default_bundle")

SPACING = 0.4                        # pixel size the phantoms are made at (and evaluated on)
TRAIN_SEEDS = range(1000, 1040)      # 40 normal volumes (last 4 held out for validation L1)
TRAIN_SLICES = 16
VAL_SEED, TEST_SEED = 5000, 9000     # validation: rule, p, threshold; test: reported metrics
TEST_SEEDS = range(TEST_SEED, TEST_SEED + 6)  # the test volumes of issue 10
P_GRID = (0.5, 0.25)                 # dropout p tried on validation (official 0.5)
VERSION = "0.2-synthetic-realistic"


def train_config(*, ngf: int = 8, ndf: int = 8, stride: int = 16, minutes: float | None = None,
                 batch_size: int = 16, threads: int = 1, spacing: float = SPACING) -> TrainConfig:
    """Reduced configuration of the default bundle (window 64 / hole 32 at ``spacing`` mm)."""
    return TrainConfig(window=64, hole=32, max_delta=8, stride=stride, pixel_spacing_mm=spacing,
                       ngf=ngf, ndf=ndf, batch_size=batch_size, iterations=1_000_000,
                       val_every=250, checkpoint_every=250, val_windows=128, threads=threads,
                       seed=0, m=10, metric="MeanCD_image", max_minutes=minutes,
                       val_fraction=0.1)


def normal_phantom(seed: int):
    """One training normal: BI-RADS a-d, CC/MLO, real-size (even seeds) or fitted FOV (odd)."""
    r = np.random.default_rng(seed)
    birads = "abcd"[int(r.integers(4))]
    view = "MLO" if r.random() < 0.5 else "CC"
    if seed % 2 == 0:
        return make_phantom(seed=seed, lesions=0, slices=TRAIN_SLICES, real_size=True,
                            pixel_spacing_mm=SPACING, view=view, birads=birads)
    rows = int(r.integers(224, 321))
    cols = int(r.integers(160, 241))
    return make_phantom(seed=seed, lesions=0, slices=TRAIN_SLICES, rows=rows, cols=cols,
                        pixel_spacing_mm=SPACING, view=view, birads=birads)


def to_model_grid(volume: np.ndarray, spacing: float) -> np.ndarray:
    """A phantom made at :data:`SPACING` on a model grid of ``spacing`` mm, resampled as the
    node resamples a series (:func:`models.stream.load_slice`: antialiased bilinear)."""
    if spacing == SPACING:
        return volume
    from models.stream import grid_size, load_slice

    size = grid_size(volume.shape[1:], (SPACING, SPACING), spacing)
    return np.stack([load_slice(s, size, None) for s in volume])


def normal_volumes(spacing: float = SPACING) -> tuple[list[np.ndarray], list[dict]]:
    vols, info = [], []
    for s in TRAIN_SEEDS:
        p = normal_phantom(s)
        vols.append(to_model_grid(p.volume, spacing))
        info.append({"seed": s, "shape": list(vols[-1].shape), "view": p.view,
                     "birads": p.info.get("birads"), "density": p.info.get("density"),
                     "real_size": bool(p.info.get("real_size"))})
    return vols, info


def training_text(out: Path) -> str:
    """The card's training entry, from the run's history and settings."""
    meta = json.loads((out / "train_meta.json").read_text()) if (out / "train_meta.json").is_file() \
        else {}
    hist = json.loads((out / "history.json").read_text()) if (out / "history.json").is_file() \
        else []
    best = min(hist, key=lambda h: h["val_l1"]) if hist else None
    iters = hist[-1]["iteration"] if hist else 0
    minutes = sum(float(m) for m in meta.get("minutes_per_part", []))
    init = meta.get("init_from")
    n = len(TRAIN_SEEDS)
    n_val = max(1, round(0.1 * n))
    spacing = float(meta.get("spacing_mm", SPACING))
    grid = ("" if spacing == SPACING else
            f", resampled to {spacing:g} mm as the node resamples a series (antialiased bilinear)")
    hole_mm = 32 * spacing
    text = (
        f"models.lab.train on {n} normal realistic synthetic DBT phantoms (models.lab.phantom "
        f"generator {meta.get('generator', '?')}, lesions=0, seeds {TRAIN_SEEDS.start}-"
        f"{TRAIN_SEEDS.stop - 1}, {TRAIN_SLICES} slices made at {SPACING:g} mm{grid}; BI-RADS "
        "density a-d and CC/MLO drawn from the seed; even seeds real-size breasts (size and "
        "thickness from population ranges, about 362 x 272 px at 0.4 mm), odd seeds breasts "
        "fitted into 224-320 x 160-240 px at 0.4 mm; last "
        f"{n_val} held out for the validation L1); WGAN-GP with the official loss weights; "
        f"reduced configuration ngf={meta.get('ngf', '?')}, ndf={meta.get('ndf', '?')}, window "
        f"64, hole 32 at {spacing:g} mm (a hole of {hole_mm:.1f} mm; official 256/128 at "
        "~0.1 mm: 12.8 mm), max "
        f"hole jitter 8 px, batch {meta.get('batch_size', 16)}, no dropout in training; "
        f"{iters} critic iterations ({iters // 5} generator steps) in {minutes:.0f} min on {meta.get('device_text', '?')}")
    if init:
        version = meta.get("init_from_version")
        text += (f"; warm start from {init}" + (f" version {version}" if version else "")
                 + " (generator and critics weights; fresh Adam state)")
    if best:
        text += f"; bundle = iteration {best['iteration']} (best validation L1 {best['val_l1']:.4f})"
    return text


def stage_train(out: Path, args: argparse.Namespace) -> Path:
    cfg = train_config(ngf=args.ngf, ndf=args.ndf, stride=args.stride, minutes=args.minutes,
                       threads=args.threads, batch_size=args.batch_size, spacing=args.spacing)
    out.mkdir(parents=True, exist_ok=True)
    t = time.time()
    vols, info = normal_volumes(args.spacing)
    logger.info("made %d normal volumes in %.0f s", len(vols), time.time() - t)
    meta_path = out / "train_meta.json"
    meta = json.loads(meta_path.read_text()) if (args.resume and meta_path.is_file()) else {}
    from models.lab.phantom import GENERATOR_VERSION

    if args.init_from and not meta.get("init_from"):
        from models.bundle import read_card

        meta["init_from"] = str(args.init_from)
        meta["init_from_version"] = read_card(args.init_from).get("version")
    device_text = (f"{args.device}" + (f", {args.threads} CPU thread(s)" if args.device == "cpu"
                                        else ""))
    meta.update(ngf=args.ngf, ndf=args.ndf, batch_size=args.batch_size, spacing_mm=args.spacing,
                generator=GENERATOR_VERSION, volumes=info,
                device_text=device_text)
    meta.setdefault("minutes_per_part", [])
    meta_path.write_text(json.dumps(meta, indent=1))
    t = time.time()
    bundle = train(cfg, vols, out, resume=args.resume, progress=False,
                   card_extra={"training": training_text(out)}, device=args.device,
                   init_from=args.init_from)
    meta["minutes_per_part"].append(round((time.time() - t) / 60, 2))
    meta_path.write_text(json.dumps(meta, indent=1))
    # the card's training text with this part's iterations and minutes included
    from models.bundle import CARD_FILE

    card_path = Path(bundle) / CARD_FILE
    card = json.loads(card_path.read_text())
    card["training"] = training_text(out)
    card_path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return bundle


def lesion_volumes(seeds: range, *, slices: int = 24, rows: int = 224, cols: int = 160) -> list:
    """The evaluation phantoms of these seeds (:func:`models.lab.evaluate.synthetic_exams`)."""
    from models.lab.evaluate import synthetic_exams

    return synthetic_exams(seeds.start, len(seeds), slices=slices, rows=rows, cols=cols,
                           pixel_spacing_mm=SPACING)


def _exam_args(args: argparse.Namespace) -> dict:
    return {"slices": args.slices, "rows": args.rows, "cols": args.cols}


def stage_evaluate(out: Path, args: argparse.Namespace) -> dict:
    """Rule, p and threshold chosen on validation; one compare_methods run on the test set."""
    from models.lab.evaluate import (
        choose_rule,
        compare_methods,
        select_rule_on_validation,
        synthetic_exams,
    )
    from models.picard import Picard

    model = Picard.from_bundle(out / "bundle", device=args.device)
    if args.stride:
        model.card["stride"] = int(args.stride)
    spacing = SPACING  # the evaluation phantoms' grid; a model of another size resamples
    val = synthetic_exams(args.validation_seed, args.validation_count,
                          pixel_spacing_mm=spacing, **_exam_args(args))
    report: dict = {"settings": {"validation_seeds": [args.validation_seed,
                                                      args.validation_seed
                                                      + args.validation_count - 1],
                                 "test_seeds": [args.seed, args.seed + args.count - 1],
                                 "volume_shape": [args.slices, args.rows, args.cols],
                                 "m": args.m, "p_grid": list(args.p_grid),
                                 "stride": int(model.card["stride"])}}
    sel_path = out / "validation_selection.json"
    key = {"training_iteration": model.card.get("training_iteration"),
           "p_grid": [float(p) for p in args.p_grid], "stride": int(model.card["stride"])}
    saved = json.loads(sel_path.read_text()) if sel_path.is_file() else {}
    if args.resume and all(saved.get(k) == v for k, v in key.items()):
        report["candidate"] = saved  # same bundle, grid and stride: the selection stands
    else:
        t = time.time()
        report["candidate"] = select_rule_on_validation(model, val, p_grid=args.p_grid, m=args.m)
        report["candidate"].update(key, seconds=round(time.time() - t, 1))
        sel_path.write_text(json.dumps(report["candidate"], indent=1, default=float))
    # the choice rule applies to saved tables too (a selection saved before the rule changed)
    report["candidate"]["chosen"] = choose_rule(report["candidate"]["table"], m=args.m)
    chosen = report["candidate"]["chosen"]
    logger.info("candidate chosen on validation: %s", chosen)
    if args.compare_with:
        from models.bundle import read_card

        cmp_path = out / "validation_selection_compared.json"
        saved = json.loads(cmp_path.read_text()) if cmp_path.is_file() else {}
        ref_card = read_card(args.compare_with)
        # both bundles at the same stride in pixels when they share a pixel size; a bundle on
        # another grid keeps its own card's stride
        same_grid = float(ref_card["pixel_spacing_mm"]) == float(model.card["pixel_spacing_mm"])
        ref_stride = key["stride"] if same_grid else int(ref_card["stride"])
        if args.resume and saved.get("p_grid") == key["p_grid"] \
                and saved.get("stride") == ref_stride \
                and saved.get("training_iteration") == ref_card.get("training_iteration"):
            other = saved
        else:
            ref = Picard.from_bundle(args.compare_with, device=args.device)
            ref.card["stride"] = ref_stride
            other = select_rule_on_validation(ref, val, p_grid=args.p_grid, m=args.m)
            other.update(bundle=str(args.compare_with), bundle_version=ref.card.get("version"),
                         stride=ref_stride, training_iteration=ref.card.get("training_iteration"))
            cmp_path.write_text(json.dumps(other, indent=1, default=float))
        other["chosen"] = choose_rule(other["table"], m=args.m)
        report["compared"] = other
        report["candidate_beats_compared_on_validation"] = bool(
            chosen["selection_score"] > other["chosen"]["selection_score"])
        logger.info("compared bundle chosen on validation: %s; candidate better: %s",
                    other["chosen"], report["candidate_beats_compared_on_validation"])
    if args.count:
        model.card["dropout"]["p"] = float(chosen["p"]) if chosen["p"] > 0 else 0.5
        test = synthetic_exams(args.seed, args.count, pixel_spacing_mm=spacing,
                               **_exam_args(args))
        result = compare_methods(model, test, m=args.m, n_boot=args.n_boot, seed=0,
                                 validation=val, progress=False, print_table=True)
        report["test"] = result
    (out / "evaluation.json").write_text(json.dumps(report, indent=1, default=float))
    logger.info("evaluation written to %s", out / "evaluation.json")
    return report


def stage_choose(out: Path) -> Path:
    """``<out>/bundle_chosen``: the candidate with its validation-chosen rule, p, threshold.

    ``picard-node evaluate --model <out>/bundle_chosen`` then scores the test seeds with the
    same command as any other bundle (the card's p is what its dropout rows use).
    """
    from models.lab.evaluate import ROW_TO_CARD
    from models.picard import Picard

    report = json.loads((out / "evaluation.json").read_text())
    chosen = report["candidate"]["chosen"]
    model = Picard.from_bundle(out / "bundle")
    card = dict(model.card)
    card.update(metric=ROW_TO_CARD[chosen["row"]][0], M=int(chosen["M"]),
                stride=int(report["settings"]["stride"]), threshold=float(chosen["threshold"]))
    card["dropout"] = {**card["dropout"], "p": float(chosen["p"]) if chosen["p"] > 0 else 0.5}
    dest = model.save_bundle(out / "bundle_chosen", card)
    logger.info("%s: %s, p=%s, threshold %.4g", dest, chosen["row"], card["dropout"]["p"],
                chosen["threshold"])
    return Path(dest)


def _evaluation_text(test: dict | None) -> str:
    """How the card's test metrics were measured (from a picard-node evaluate result)."""
    if not test:
        return "not evaluated"
    st = test["settings"]
    seeds, shape = st.get("seeds", [TEST_SEED, TEST_SEED]), st.get("volume_shape", [0, 0, 0])
    vseeds = st.get("validation_seeds") or [VAL_SEED, VAL_SEED - 1]
    cmd = (f"picard-node evaluate --count {seeds[1] - seeds[0] + 1} --seed {seeds[0]} "
           f"--validation-count {vseeds[1] - vseeds[0] + 1} --validation-seed {vseeds[0]} "
           f"--slices {shape[0]} --rows {shape[1]} --cols {shape[2]} --m {st['m']}")
    grid = st.get("pixel_spacing_mm", SPACING)
    model_grid = st.get("model_pixel_spacing_mm", grid)
    if model_grid != grid:
        cmd += f" (phantoms at {grid:g} mm; the model scores each slice resampled to {model_grid:g} mm)"
    return (f"{cmd}: {st['n_exams']} whole volumes ({st['n_slices_scored']} slices), one "
            "5-30 mm mass each, view and density from the seed; pixels inside the breast; "
            f"lesions: {st['hit_rule_text']}; detections: local maxima, {st['nms_mm']:g} mm "
            f"suppression; 95% bootstrap CIs over volumes (n={st['n_boot']}, shared resamples); "
            "the best trivial baseline chosen on the validation volumes")


def stage_install(out: Path, args: argparse.Namespace, test_json: Path | None = None) -> Path | None:
    """Card with rule, p, threshold and test metrics -> models/bundles/default."""
    from models.lab.evaluate import ROW_TO_CARD
    from models.picard import Picard

    report = json.loads((out / "evaluation.json").read_text())
    if not report.get("candidate_beats_compared_on_validation", True) and not args.force:
        logger.warning("candidate did not beat %s on validation: not installed",
                       report.get("compared", {}).get("bundle"))
        return None
    model = Picard.from_bundle(out / "bundle")
    card = dict(model.card)
    sel = report["candidate"]
    chosen = sel["chosen"]
    metric, m, _ = ROW_TO_CARD[chosen["row"]]
    test = json.loads(Path(test_json).read_text()) if test_json else report.get("test")
    vs = report["settings"]["validation_seeds"]
    card["metric"] = metric
    card["M"] = int(m)
    card["dropout"] = {**card["dropout"], "p": float(chosen["p"]) if chosen["p"] > 0 else 0.5}
    card["stride"] = int(report["settings"]["stride"])
    card["inference"] = {"mode": "exact"}
    card.update(
        version=args.version,
        training=training_text(out),
        selection=(f"scoring rule and dropout p chosen on {len(range(vs[0], vs[1] + 1))} "
                   f"whole validation volumes (seeds {vs[0]}-{vs[1]}, built as picard-node "
                   "evaluate builds them) by pixel AUROC + mean lesion sensitivity at "
                   f"0.5/1/2/4 FP/volume among every rule at p in {sel['p_grid']}, stride "
                   f"{card['stride']} px ({card['stride'] * float(card['pixel_spacing_mm']):g} "
                   f"mm): {chosen['row']}, p={chosen['p']}; the test seeds were not used"),
        threshold=float(chosen["threshold"]),
        threshold_note=(f"lowest {metric} score with <= 1 false-positive detection per volume "
                        f"on the validation volumes (seeds {vs[0]}-{vs[1]}), not the test set"),
        evaluation=_evaluation_text(test),
        metrics={"test": (test or {}).get("methods", {}).get(chosen["row"]),
                 "test_all_methods": (test or {}).get("methods"),
                 "paired": (test or {}).get("paired"),
                 "test_settings": (test or {}).get("settings"),
                 "table": (test or {}).get("table"),
                 "validation_selection": sel["table"],
                 "validation_at_choice": chosen,
                 "compared_bundle_on_validation": report.get("compared", {}).get("chosen")},
    )
    other = report.get("compared")
    if other:
        o, c = other["chosen"], chosen
        card["selection"] += (
            f"; it replaced {other.get('bundle')} (version {other.get('bundle_version')}) "
            f"because its chosen rule scored higher on the same validation volumes: "
            f"{c['selection_score']:.3f} (pixel AUROC {c['validation']['pixel_auroc']:.3f}, "
            f"sens@2 FP {c['validation']['sens@2fp']:.2f}) against {o['selection_score']:.3f} "
            f"({o['row']} p={o['p']}: AUROC {o['validation']['pixel_auroc']:.3f}, sens@2 FP "
            f"{o['validation']['sens@2fp']:.2f}), {other['n_exams']} volumes with one mass each")
    final = out / "bundle_final"
    model.save_bundle(final, card)
    size = sum(f.stat().st_size for f in final.iterdir())
    if size > 25e6:
        raise ValueError(f"bundle is {size / 1e6:.1f} MB, over the 25 MB limit")
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in final.iterdir():
        shutil.copy2(f, dest / f.name)
    logger.info("installed %s -> %s (%.2f MB)", final, dest, size / 1e6)
    return dest


def _bundle_or_none(text: str) -> Path | None:
    return None if text.lower() == "none" else Path(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", choices=["train", "evaluate", "choose", "install", "all"])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "default")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--ngf", type=int, default=8, help="generator width (official 32)")
    ap.add_argument("--ndf", type=int, default=8, help="critic width (official 32)")
    ap.add_argument("--stride", type=int, default=16, help="heatmap stride (card; evaluation)")
    ap.add_argument("--spacing", type=float, default=SPACING,
                    help="model pixel size in mm (train); phantoms are made at 0.4 mm and "
                         "resampled to it")
    ap.add_argument("--batch-size", type=int, default=16, help="training windows per step")
    ap.add_argument("--minutes", type=float, default=60.0, help="training wall time of this part")
    ap.add_argument("--resume", action="store_true",
                    help="train: continue from the checkpoint; evaluate: reuse saved selections")
    ap.add_argument("--init-from", type=Path, help="warm start from this bundle's weights")
    ap.add_argument("--count", type=int, default=6, help="test volumes (seeds --seed..)")
    ap.add_argument("--seed", type=int, default=TEST_SEED)
    ap.add_argument("--validation-count", type=int, default=6)
    ap.add_argument("--validation-seed", type=int, default=VAL_SEED)
    ap.add_argument("--slices", type=int, default=24)
    ap.add_argument("--rows", type=int, default=224)
    ap.add_argument("--cols", type=int, default=160)
    ap.add_argument("--m", type=int, default=10)
    ap.add_argument("--p-grid", type=float, nargs="+", default=list(P_GRID))
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--compare-with", type=_bundle_or_none,
                    default=ROOT / "models" / "bundles" / "default",
                    help="bundle whose validation selection the candidate must beat; 'none': "
                         "no comparison (the same weights at another stride)")
    ap.add_argument("--test-json", type=Path,
                    help="install: metrics from this picard-node evaluate JSON instead")
    ap.add_argument("--force", action="store_true", help="install even if not better")
    ap.add_argument("--version", default=VERSION, help="the installed card's version")
    ap.add_argument("--dest", type=Path, default=ROOT / "models" / "bundles" / "default",
                    help="install: the bundle folder to write")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    if args.stage in ("train", "all"):
        stage_train(args.out, args)
    if args.stage in ("evaluate", "all"):
        stage_evaluate(args.out, args)
    if args.stage in ("choose", "all"):
        stage_choose(args.out)
    if args.stage in ("install", "all"):
        stage_install(args.out, args, args.test_json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
