"""``picard-node``: the command line, the one place that composes the packages.

Sub-commands: ``serve``, ``worker``, ``status``, ``retry``, ``outbox``, ``synth``, ``score``,
``model import-official``, ``train``, ``evaluate``, ``bench``, ``demo``. Each is a thin
function over library code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dicom_node.config import CONFIG_PATH_ENV, Destination, Settings, load_settings
from dicom_node.result_kinds import ResultKind

logger = logging.getLogger("picard_node")


def _parse_destination(text: str) -> Destination:
    """``AE@host:port[=KIND,KIND...|all]`` → Destination (the kinds: its ``objects``)."""
    address, _, kinds = text.partition("=")
    try:
        ae, rest = address.split("@", 1)
        host, port = rest.rsplit(":", 1)
        extra = {"objects": _result_kinds(kinds)} if kinds else {}
        return Destination(ae_title=ae, host=host, port=int(port), **extra)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        raise argparse.ArgumentTypeError(
            f"destination {text!r} must look like AE@host:port[=KIND,...|all], e.g. "
            f"ORTHANC@127.0.0.1:4242 or WS@10.0.0.9:104=mammography-cad-sr,key-images "
            f"(kinds: {', '.join(k.value for k in ResultKind)})"
        ) from exc


def _settings_from_args(args: argparse.Namespace) -> Settings:
    overrides = {
        "port": getattr(args, "port", None),
        "ae_title": getattr(args, "ae_title", None),
        "spool_dir": getattr(args, "spool_dir", None),
        "broker_url": getattr(args, "broker_url", None),
        "model_bundle": getattr(args, "model", None),
        "device": getattr(args, "device", None),
        "series_quiet_seconds": getattr(args, "quiet_seconds", None),
        "inference_mode": getattr(args, "inference_mode", None),
    }
    dests = getattr(args, "destination", None)
    if dests:
        overrides["destinations"] = dests
    return load_settings(getattr(args, "config", None), **overrides)


def _configure_logging(level: str) -> None:
    from dicom_node.phi import install_log_guard

    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("pynetdicom", "celery", "kombu", "amqp", "highdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    # no attribute value in any log line: tracebacks without messages that may quote values,
    # library text withheld (pydicom/highdicom), Celery's task-failure "exc" withheld unless
    # it is a rejection or retry (the tasks raise only PHI-free ones, workers.tasks.StageTask)
    install_log_guard(mapping_args=("exc",),
                      keep_when={"description": ("rejected", "retry")})


# --------------------------------------------------------------------------- serve / worker
def cmd_serve(args: argparse.Namespace) -> int:
    """Run the storage SCP; enqueue complete series; embedded worker without a broker URL."""
    from workers.node import serve

    return serve(_settings_from_args(args))


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker on the given queues."""
    from workers.node import run_worker

    return run_worker(_settings_from_args(args), queues=args.queues,
                      concurrency=args.concurrency, pool=args.pool, log_level=args.log_level,
                      embedded_parent=args.embedded_parent)


# --------------------------------------------------------------------------- status / retry
def cmd_status(args: argparse.Namespace) -> int:
    """Failed, quarantined, stuck and in-progress series and the outbox; 1 if any failed."""
    from workers.ops import status_report

    text, attention = status_report(_settings_from_args(args), as_json=args.json)
    print(text)
    return 1 if attention else 0


def cmd_retry(args: argparse.Namespace) -> int:
    """Dispatch failed, quarantined or stuck series again."""
    from workers.ops import retry_series

    print("\n".join(retry_series(_settings_from_args(args), args.series_uids, all_=args.all)))
    return 0


# --------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic DBT exams (and their ground-truth SEG); optionally measure their realism.

    With ``--report`` (or ``--report-only``, which writes nothing) each exam's entry gets the
    figures of :func:`models.lab.phantom.realism_report` and the generation time; with
    ``--count`` > 1 the output is ``{"exams": [...], "median": {...}}``.
    """
    import math
    import statistics

    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

    from models.lab.phantom import make_phantom, realism_report
    from workers.synthetic_exams import write_exam

    report = args.report or args.report_only
    out = Path(args.out_dir)
    if not args.report_only:
        out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(args.count):
        seed = args.seed + i
        t0 = time.perf_counter()
        phantom = make_phantom(seed=seed, lesions=args.lesions, slices=args.slices, rows=args.rows,
                               cols=args.cols, laterality=args.laterality, view=args.view,
                               pixel_spacing_mm=args.pixel_spacing, density=args.density,
                               calcifications=args.calcifications, birads=args.birads,
                               real_size=args.real_size, distortion=args.distortion,
                               sweep_angle_deg=args.sweep_angle,
                               lesion_diameter_mm=tuple(args.lesion_diameter))
        entry: dict = {"seed": seed}
        if report:
            entry["seconds"] = round(time.perf_counter() - t0, 2)
        if not args.report_only:
            exam = write_exam(phantom, out if args.count == 1 else out / f"exam_{seed:04d}",
                              seed=seed, per_slice=args.per_slice,
                              transfer_syntax=JPEG2000Lossless if args.jpeg2000
                              else ExplicitVRLittleEndian)
            entry.update(files=[str(f) for f in exam.files], truth=str(exam.truth_seg))
        entry["lesions"] = len(phantom.lesions)
        if report:
            entry["report"] = realism_report(phantom)
        written.append(entry)
    if not report or args.count == 1:
        print(json.dumps(written if args.count > 1 else written[0], indent=2, default=float))
        return 0
    median: dict[str, float | None] = {}
    for key in ("seconds", "slice_beta", "slice_beta_fine", "slice_beta_0p4mm", "mass_contrast",
                "mass_core_above_p99", "mass_texture_ratio", "density", "glandular_fraction",
                "dense_fraction"):
        vals = [e["seconds"] if key == "seconds" else e["report"].get(key) for e in written]
        vals = [float(v) for v in vals if v is not None and not math.isnan(float(v))]
        median[key] = statistics.median(vals) if vals else None
    print(json.dumps({"exams": written, "median": median}, indent=2, default=float))
    return 0


# --------------------------------------------------------------------------- score
def _result_kinds(text: str) -> list[ResultKind]:
    """``--objects``: comma-separated result kinds, or ``all``."""
    if text.strip() == "all":
        return list(ResultKind)
    try:
        return [ResultKind(k.strip()) for k in text.split(",") if k.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def cmd_score(args: argparse.Namespace) -> int:
    """Analyze + encode files with no network."""
    from dicom_node.results import ResultFolder
    from workers.pipeline import run_offline

    results = run_offline([Path(p) for p in args.inputs], Path(args.out), bundle=args.model,
                          device=args.device or "cpu", mode=args.inference_mode,
                          kinds=args.objects)
    for r in results:
        folder = ResultFolder(r)
        summary = folder.summary()
        summary["objects"] = [str(p) for p in folder.objects()]
        print(json.dumps(summary, indent=2))
    return 0


# --------------------------------------------------------------------------- model
def cmd_model_import_official(args: argparse.Namespace) -> int:
    """Write a model bundle from official ``gen_*.pt`` / ``dis_*.pt`` checkpoints."""
    from models.bundle import import_official

    out = import_official(Path(args.gen), Path(args.dis), Path(args.out),
                          threshold=args.threshold)
    print(f"wrote bundle {out}")
    return 0


# --------------------------------------------------------------------------- train / evaluate
def _training_arrays(inputs: list[Path], spacing_mm: float) -> list:
    """Normal training data: DICOM series (resampled to ``spacing_mm``) or image folders."""
    from dicom_node.volume import group_by_series, load_at_spacing
    from models.lab.train import load_image_folder

    arrays = []
    for item in inputs:
        by_series = group_by_series([item])
        if by_series:
            arrays.extend(load_at_spacing(files, spacing_mm) for files in by_series.values())
        else:
            arrays.extend(load_image_folder(item))
    if not arrays:
        raise FileNotFoundError(f"no training data found in {[str(i) for i in inputs]}")
    return arrays


def cmd_train(args: argparse.Namespace) -> int:
    """Train a bundle on normal data (DICOM series or image folders)."""
    from models.lab.train import TrainConfig, train

    config = TrainConfig(window=args.window, hole=args.hole, max_delta=args.max_delta,
                         stride=args.stride, pixel_spacing_mm=args.pixel_spacing, ngf=args.ngf,
                         ndf=args.ndf, batch_size=args.batch_size, iterations=args.iterations,
                         max_minutes=args.minutes, threads=args.threads, seed=args.seed)
    data = _training_arrays([Path(p) for p in args.inputs], args.pixel_spacing)
    logger.info("training on %d normal arrays", len(data))
    bundle = train(config, data, Path(args.out), resume=args.resume, progress=True,
                   device=args.device)
    print(f"bundle: {bundle}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Every PICARD rule beside trivial baselines on whole synthetic volumes with truth."""
    import torch

    from models import Picard
    from models.lab.evaluate import compare_methods, synthetic_exams

    if args.threads:
        torch.set_num_threads(args.threads)
    model = Picard.from_bundle(args.model, device=args.device or "cpu")
    spacing = float(args.pixel_spacing)  # the phantoms' grid; the model scores on its own

    def exams(first: int, count: int) -> list:
        # one 5-30 mm mass per volume; view and density from the seed
        # (models.lab.evaluate.synthetic_exams, shared with scripts/train_default_bundle.py)
        return synthetic_exams(first, count, slices=args.slices, rows=args.rows,
                               cols=args.cols, pixel_spacing_mm=spacing)

    validation = exams(args.validation_seed, args.validation_count) \
        if args.validation_count else None
    result = compare_methods(model, exams(args.seed, args.count), m=args.m,
                             n_boot=args.n_boot, seed=0, validation=validation,
                             progress=True, print_table=True)
    result["settings"].update(
        bundle=str(args.model or "default"), seeds=[args.seed, args.seed + args.count - 1],
        volume_shape=[args.slices, args.rows, args.cols], pixel_spacing_mm=spacing,
        model_pixel_spacing_mm=float(model.card["pixel_spacing_mm"]),
        validation_seeds=([args.validation_seed, args.validation_seed + args.validation_count - 1]
                          if args.validation_count else None),
        threads=torch.get_num_threads(), device=str(model.device))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0


# --------------------------------------------------------------------------- outbox
def cmd_outbox(args: argparse.Namespace) -> int:
    """List undelivered results, or queue them for export again."""
    from dicom_node.outbox import Outbox

    settings = _settings_from_args(args)
    outbox = Outbox(settings.spool_dir)
    entries = outbox.entries()
    if args.outbox_command == "list":
        if not entries:
            print("outbox empty")
        for e in entries:
            age = time.time() - e.first_attempt
            job = f"  job {e.job_id}" if e.job_id else ""
            print(f"{e.result_id}  {e.state:<11}  attempts {e.attempts:<3} age {age:8.0f} s"
                  f"{job}  {e.last_error[:100]}")
        return 0
    from workers.ops import retry_exports

    print("\n".join(retry_exports(settings, args.result_ids, all_=args.all)))
    return 0


# --------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """Speed and accuracy of the inference modes on this machine (``workers.bench_cli``)."""
    from workers.bench_cli import run_bench_command

    return run_bench_command(args.bench_args)


# --------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    """Synthetic exam → node (embedded) → local PACS, with a summary and PNG previews."""
    from workers.demo import run_demo

    return run_demo(Path(args.out), seed=args.seed, timeout=args.timeout)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="picard-node", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    def node_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help=f"YAML settings file (default ${CONFIG_PATH_ENV})")
        p.add_argument("--spool-dir", type=Path)
        p.add_argument("--broker-url")
        p.add_argument("--model", type=Path, help="model bundle folder")
        p.add_argument("--device", help="torch device: cpu, cuda, cuda:N")
        p.add_argument("--inference-mode", choices=["exact", "fast"],
                       help="override the model card's inference mode (results say which)")

    p = sub.add_parser("serve", help="run the DICOM storage SCP")
    node_options(p)
    p.add_argument("--port", type=int)
    p.add_argument("--ae-title")
    p.add_argument("--quiet-seconds", type=float, help="per-slice series quiet period")
    p.add_argument("--destination", action="append", type=_parse_destination,
                   help="AE@host:port[=KIND,...|all], repeatable; KIND: the result objects "
                        "it takes (default parametric-map,segmentation,findings-sr)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker")
    node_options(p)
    p.add_argument("--queues", default="gpu,io")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.add_argument("--embedded-parent", type=int, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="failed, quarantined, stuck series and the outbox "
                                      "(exit status 1 when something needs attention)")
    node_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("retry", help="dispatch failed, quarantined or stuck series again")
    node_options(p)
    p.add_argument("series_uids", nargs="*", metavar="SERIES_UID")
    p.add_argument("--all", action="store_true", help="every failed or quarantined series")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("synth", help="write synthetic DBT exams")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=1, help="number of exams (seeds seed..seed+count-1)")
    p.add_argument("--lesions", type=int, default=1)
    p.add_argument("--slices", type=int,
                   help="default 32, or from the compressed thickness with --real-size")
    p.add_argument("--rows", type=int, help="default 512, or from the breast with --real-size")
    p.add_argument("--cols", type=int, help="default 384, or from the breast with --real-size")
    p.add_argument("--pixel-spacing", type=float, default=0.1, help="mm")
    p.add_argument("--laterality", choices=["L", "R"], default="L")
    p.add_argument("--view", choices=["CC", "MLO"], default="CC")
    p.add_argument("--density", type=float,
                   help="fibroglandular fraction of the glandular region (default 0.5)")
    p.add_argument("--birads", choices=["a", "b", "c", "d"],
                   help="BI-RADS density category (draws the density; not with --density)")
    p.add_argument("--real-size", action="store_true",
                   help="breast size and thickness drawn from population ranges; the field of "
                        "view follows unless --rows/--cols/--slices are given")
    p.add_argument("--calcifications", action="store_true")
    p.add_argument("--distortion", action="store_true", help="add an architectural distortion")
    p.add_argument("--lesion-diameter", type=float, nargs=2, default=[5.0, 30.0],
                   metavar=("MIN", "MAX"), help="mass diameter range, mm (default 5 30)")
    p.add_argument("--sweep-angle", type=float, default=15.0,
                   help="tube sweep angle, degrees (ghost streak length; default 15)")
    p.add_argument("--report", action="store_true",
                   help="also print measured realism figures (JSON; medians when --count > 1)")
    p.add_argument("--report-only", action="store_true",
                   help="measure the realism figures without writing DICOM")
    p.add_argument("--per-slice", action="store_true", help="one single-frame instance per slice")
    p.add_argument("--jpeg2000", action="store_true", help="JPEG 2000 lossless pixel data")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("score", help="analyze + encode files offline")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--model", type=Path)
    p.add_argument("--device")
    p.add_argument("--inference-mode", choices=["exact", "fast"],
                   help="override the model card's inference mode (results say which)")
    p.add_argument("--objects", type=_result_kinds, metavar="KIND[,KIND...]",
                   help="result objects to write (default: parametric-map,segmentation,"
                        "findings-sr; 'all' for every kind): "
                        + ", ".join(k.value for k in ResultKind))
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("model", help="model bundle tools")
    msub = p.add_subparsers(dest="model_command", required=True)
    q = msub.add_parser("import-official", help="bundle official gen_*.pt + dis_*.pt")
    q.add_argument("gen")
    q.add_argument("dis")
    q.add_argument("out")
    q.add_argument("--threshold", type=float,
                   help="MCD score for the binary SEG (calibrate on local normal exams)")
    q.set_defaults(func=cmd_model_import_official)

    p = sub.add_parser("train", help="train a model bundle on normal data")
    p.add_argument("inputs", nargs="+", help="DICOM files/folders or image folders (PNG/NPY)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, bundle/)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--minutes", type=float, help="stop after this wall time")
    p.add_argument("--iterations", type=int, default=20000)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--hole", type=int, default=32)
    p.add_argument("--max-delta", type=int, default=8)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--pixel-spacing", type=float, default=0.4, help="mm, data resampled to it")
    p.add_argument("--ngf", type=int, default=8)
    p.add_argument("--ndf", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="every PICARD rule beside trivial baselines, whole "
                                        "synthetic volumes, paired bootstrap CIs")
    p.add_argument("--model", type=Path, help="model bundle folder (default: shipped bundle)")
    p.add_argument("--count", type=int, default=20, help="test volumes (seeds seed..)")
    p.add_argument("--seed", type=int, default=9000, help="first test seed")
    p.add_argument("--validation-count", type=int, default=0,
                   help="validation volumes on which the best trivial baseline is chosen "
                        "(0: compare with each baseline)")
    p.add_argument("--validation-seed", type=int, default=5000, help="first validation seed")
    p.add_argument("--slices", type=int, default=24, help="slices per volume (all scored)")
    p.add_argument("--rows", type=int, default=224)
    p.add_argument("--cols", type=int, default=160)
    p.add_argument("--pixel-spacing", type=float, default=0.4,
                   help="mm per pixel of the phantoms (rows x cols at this size); a model "
                        "with another pixel size scores each slice resampled to its own, as "
                        "the node does, and the metrics are counted on the phantoms' grid")
    p.add_argument("--m", type=int, default=10, help="completions per window (dropout rules)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", help="torch device: cpu (default), cuda, cuda:N")
    p.add_argument("--json", help="write the result (metrics, specs, paired CIs) as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("outbox", help="undelivered results: list, retry")
    osub = p.add_subparsers(dest="outbox_command", required=True)
    q = osub.add_parser("list", help="pending and dead-lettered results")
    node_options(q)
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("retry", help="queue export again (dead-lettered ones, and pending "
                                      "ones with no job queued)")
    node_options(q)
    q.add_argument("result_ids", nargs="*")
    q.add_argument("--all", action="store_true")
    q.set_defaults(func=cmd_outbox)

    p = sub.add_parser("bench", help="inference speed and accuracy per mode (see bench --help)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="end-to-end demo on a synthetic exam")
    p.add_argument("--out", default="demo-out")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(func=cmd_demo)
    return parser


def main(args: Sequence[str] | None = None) -> int:
    """Entry point of ``picard-node``."""
    parser = build_parser()
    argv = list(sys.argv[1:] if args is None else args)
    ns, extra = parser.parse_known_args(argv)
    if getattr(ns, "func", None) is cmd_bench:
        # argparse.REMAINDER does not take a list that starts with an option, so
        # everything after "bench" goes to the benchmark's own parser as it was typed
        ns.bench_args = argv[argv.index("bench") + 1:]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _configure_logging(ns.log_level)
    try:
        return int(ns.func(ns) or 0)
    except (ValueError, FileNotFoundError) as exc:
        logger.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
