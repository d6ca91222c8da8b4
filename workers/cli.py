"""``picard-node``: the command line, the one place that composes the packages.

Sub-commands: ``serve``, ``worker``, ``synth``, ``score``, ``model import-official``,
``train``, ``evaluate``, ``demo``. Each is a thin function over library code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import yaml

from dicom_node.config import CONFIG_PATH_ENV, Destination, Settings, load_settings

logger = logging.getLogger("picard_node")


def _parse_destination(text: str) -> Destination:
    """``AE@host:port`` → Destination."""
    try:
        ae, rest = text.split("@", 1)
        host, port = rest.rsplit(":", 1)
        return Destination(ae_title=ae, host=host, port=int(port))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"destination {text!r} must look like AE@host:port, e.g. ORTHANC@127.0.0.1:4242"
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
    }
    dests = getattr(args, "destination", None)
    if dests:
        overrides["destinations"] = dests
    return load_settings(getattr(args, "config", None), **overrides)


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("pynetdicom", "celery", "kombu", "amqp", "highdicom"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


# --------------------------------------------------------------------------- serve / worker
def cmd_serve(args: argparse.Namespace) -> int:
    """Run the storage SCP; enqueue complete series; embedded worker without a broker URL."""
    from dicom_node.scp import StorageSCP
    from dicom_node import spool as spool_mod

    from workers.celery_app import make_celery, set_app

    settings = _settings_from_args(args)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    app = make_celery(settings)
    # set_default too: the SCP's monitor thread dispatches, and current_app is thread-local
    app.set_default()
    app.set_current()
    set_app(app)
    from workers.tasks import dispatch_series

    spool = spool_mod.Spool(settings.spool_dir)

    def on_series_complete(ref) -> None:
        job_id = dispatch_series(ref.directory)
        spool.mark_dispatched(ref, job_id)
        logger.info("series %s queued as job %s", ref.series_uid, job_id)

    # What a previous run left unfinished, listed before the SCP can add new series:
    # complete but never queued, and (embedded broker only, see _lost_embedded_jobs)
    # queued but never finished, plus undelivered outbox entries.
    leftover = spool.pending_series()
    lost_series, lost_exports = _lost_embedded_jobs(settings, spool) if settings.embedded \
        else ([], [])
    # The SCP starts first: a bad TLS file or allow-list entry stops the node before anything.
    scp = StorageSCP(settings, on_series_complete)
    scp.start()
    worker_proc = _spawn_embedded_worker(settings) if settings.embedded else None
    for ref in lost_series + leftover:
        logger.info("re-dispatching series %s left unfinished by a previous run", ref.series_uid)
        on_series_complete(ref)
    if lost_exports:
        from workers.tasks import dispatch_export

        for result_dir in lost_exports:
            logger.info("re-queuing export of %s from the outbox", Path(result_dir).name)
            dispatch_export(result_dir)
    print(json.dumps({"event": "listening", "ae_title": settings.ae_title, "port": scp.port,
                      "embedded_worker": settings.embedded}), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            if worker_proc is not None and worker_proc.poll() is not None:
                logger.error("embedded worker exited with %s; restarting it", worker_proc.returncode)
                worker_proc = _spawn_embedded_worker(settings)
    finally:
        scp.stop()
        if worker_proc is not None:
            worker_proc.terminate()
            try:
                worker_proc.wait(30)
            except subprocess.TimeoutExpired:
                worker_proc.kill()
    return 0


def _lost_embedded_jobs(settings: Settings, spool) -> tuple[list, list[str]]:
    """Work the on-disk broker may have lost with a killed worker.

    The filesystem transport removes a message when a worker takes it, so a job in flight
    (or waiting for a retry countdown) when the node died is gone. Every stage is idempotent,
    so queuing dispatched-but-not-done series and undelivered outbox entries again is safe.

    Returns
    -------
    tuple
        Series refs to dispatch again, result folders to export again.
    """
    from dicom_node.outbox import Outbox

    series = [ref for ref in spool.all_series() if spool.state(ref) == "dispatched"]
    exports = [e.result_dir for e in Outbox(settings.spool_dir).entries() if e.state == "pending"]
    return series, exports


def _spawn_embedded_worker(settings: Settings) -> subprocess.Popen:
    """Start ``picard-node worker`` as a child with the node's exact settings."""
    settings_file = settings.spool_dir / "node-settings.yaml"
    settings_file.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICARD_")}
    env[CONFIG_PATH_ENV] = str(settings_file.resolve())
    cmd = [sys.executable, "-m", "workers.cli", "worker", "--config", str(settings_file.resolve())]
    logger.info("starting embedded worker: %s", " ".join(cmd))
    return subprocess.Popen(cmd, env=env)


def cmd_worker(args: argparse.Namespace) -> int:
    """Run a Celery worker on the given queues."""
    from workers.celery_app import make_celery, set_app

    settings = _settings_from_args(args)
    app = make_celery(settings)
    # set_default too: the SCP's monitor thread dispatches, and current_app is thread-local
    app.set_default()
    app.set_current()
    set_app(app)
    import workers.tasks  # noqa: F401  (registers the tasks)

    argv = ["worker", "-Q", args.queues, "-c", str(args.concurrency or settings.worker_concurrency),
            "-P", args.pool, "--loglevel", args.log_level.upper(),
            "-n", f"picard-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    app.worker_main(argv)
    return 0


# --------------------------------------------------------------------------- synth
def cmd_synth(args: argparse.Namespace) -> int:
    """Write synthetic DBT exams (and their ground-truth SEG)."""
    from dicom_node.synthetic import write_bto, write_truth_seg
    from models.phantom import make_phantom
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(args.count):
        seed = args.seed + i
        phantom = make_phantom(seed=seed, lesions=args.lesions, slices=args.slices, rows=args.rows,
                               cols=args.cols, laterality=args.laterality, view=args.view,
                               pixel_spacing_mm=args.pixel_spacing, density=args.density,
                               calcifications=args.calcifications)
        exam_dir = out if args.count == 1 else out / f"exam_{seed:04d}"
        exam_dir.mkdir(parents=True, exist_ok=True)
        files = write_bto(phantom.volume, exam_dir, laterality=phantom.laterality,
                          view=phantom.view, pixel_spacing_mm=phantom.pixel_spacing_mm,
                          slice_thickness_mm=phantom.slice_thickness_mm, seed=seed,
                          per_slice=args.per_slice,
                          transfer_syntax=JPEG2000Lossless if args.jpeg2000 else ExplicitVRLittleEndian)
        truth_dir = exam_dir / "truth"
        truth_dir.mkdir(exist_ok=True)
        truth = write_truth_seg(files, phantom.lesion_mask, truth_dir)
        (truth_dir / "lesions.json").write_text(json.dumps(phantom.lesions, indent=2))
        written.append({"seed": seed, "files": [str(f) for f in files], "truth": str(truth),
                        "lesions": len(phantom.lesions)})
    print(json.dumps(written if args.count > 1 else written[0], indent=2))
    return 0


# --------------------------------------------------------------------------- score
def cmd_score(args: argparse.Namespace) -> int:
    """Analyze + encode files with no network."""
    from workers.pipeline import run_offline, RESULT_FILE, OBJECTS_DIR

    results = run_offline([Path(p) for p in args.inputs], Path(args.out), bundle=args.model,
                          device=args.device or "cpu")
    for r in results:
        summary = json.loads((r / RESULT_FILE).read_text())
        summary["objects"] = sorted(str(p) for p in (r / OBJECTS_DIR).glob("*.dcm"))
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
    import numpy as np
    from scipy.ndimage import zoom

    from dicom_node.volume import group_by_series, load_series
    from models.train import load_image_folder

    arrays = []
    for item in inputs:
        by_series = group_by_series([item])
        if not by_series:
            arrays.extend(load_image_folder(item))
            continue
        for files in by_series.values():
            vol = load_series(files)
            factors = (1.0, vol.pixel_spacing_mm[0] / spacing_mm, vol.pixel_spacing_mm[1] / spacing_mm)
            pixels = vol.pixels if factors == (1.0, 1.0, 1.0) else zoom(vol.pixels, factors, order=1)
            arrays.append(np.clip(pixels, 0, 1).astype(np.float32))
    if not arrays:
        raise FileNotFoundError(f"no training data found in {[str(i) for i in inputs]}")
    return arrays


def cmd_train(args: argparse.Namespace) -> int:
    """Train a bundle on normal data (DICOM series or image folders)."""
    from models.train import TrainConfig, train

    config = TrainConfig(window=args.window, hole=args.hole, max_delta=args.max_delta,
                         stride=args.stride, pixel_spacing_mm=args.pixel_spacing, ngf=args.ngf,
                         ndf=args.ndf, batch_size=args.batch_size, iterations=args.iterations,
                         max_minutes=args.minutes, threads=args.threads, seed=args.seed)
    data = _training_arrays([Path(p) for p in args.inputs], args.pixel_spacing)
    logger.info("training on %d normal arrays", len(data))
    bundle = train(config, data, Path(args.out), resume=args.resume, progress=True)
    print(f"bundle: {bundle}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Compare MCD vs single completion vs mean distance on synthetic exams with truth."""
    from models import Picard
    from models.evaluate import compare_methods
    from models.phantom import make_phantom

    model = Picard.from_bundle(args.model) if args.model else Picard.from_bundle()
    spacing = float(model.card["pixel_spacing_mm"])
    exams = [make_phantom(seed=args.seed + i, lesions=1, slices=args.slices, rows=args.rows,
                          cols=args.cols, pixel_spacing_mm=spacing,
                          view="MLO" if (args.seed + i) % 3 == 0 else "CC",
                          lesion_diameter_mm=(5.0, 30.0))
             for i in range(args.count)]
    result = compare_methods(model, exams, m=args.m, n_boot=args.n_boot, seed=0,
                             progress=True, print_table=True)
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
            print(f"{e.result_id}  {e.state:<11}  attempts {e.attempts:<3} age {age:8.0f} s  "
                  f"{e.last_error[:100]}")
        return 0
    from workers.celery_app import make_celery, set_app

    app = make_celery(settings)
    app.set_default()
    set_app(app)
    from workers.tasks import dispatch_export

    wanted = set(args.result_ids)
    chosen = [e for e in entries if args.all or e.result_id in wanted]
    missing = wanted - {e.result_id for e in entries}
    if missing:
        raise ValueError(f"not in the outbox or dead-letter folder: {sorted(missing)}")
    if not chosen:
        raise ValueError("name result ids to retry, or --all")
    for e in chosen:
        outbox.revive(e.result_id)
        job = dispatch_export(e.result_dir)
        print(f"{e.result_id}: export queued as job {job}")
    return 0


# --------------------------------------------------------------------------- bench
def cmd_bench(args: argparse.Namespace) -> int:
    """Speed and accuracy of the inference modes on this machine (``models.bench``)."""
    from models.bench import main as bench_main

    return int(bench_main(args.bench_args) or 0)


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

    p = sub.add_parser("serve", help="run the DICOM storage SCP")
    node_options(p)
    p.add_argument("--port", type=int)
    p.add_argument("--ae-title")
    p.add_argument("--quiet-seconds", type=float, help="per-slice series quiet period")
    p.add_argument("--destination", action="append", type=_parse_destination,
                   help="AE@host:port, repeatable")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker")
    node_options(p)
    p.add_argument("--queues", default="gpu,io")
    p.add_argument("--concurrency", type=int)
    p.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("synth", help="write synthetic DBT exams")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--count", type=int, default=1, help="number of exams (seeds seed..seed+count-1)")
    p.add_argument("--lesions", type=int, default=1)
    p.add_argument("--slices", type=int, default=32)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--cols", type=int, default=384)
    p.add_argument("--pixel-spacing", type=float, default=0.1, help="mm")
    p.add_argument("--laterality", choices=["L", "R"], default="L")
    p.add_argument("--view", choices=["CC", "MLO"], default="CC")
    p.add_argument("--density", type=float, default=0.5)
    p.add_argument("--calcifications", action="store_true")
    p.add_argument("--per-slice", action="store_true", help="one single-frame instance per slice")
    p.add_argument("--jpeg2000", action="store_true", help="JPEG 2000 lossless pixel data")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("score", help="analyze + encode files offline")
    p.add_argument("inputs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--model", type=Path)
    p.add_argument("--device")
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
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="metrics of scoring variants on synthetic exams")
    p.add_argument("--model", type=Path)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--seed", type=int, default=9000)
    p.add_argument("--slices", type=int, default=24)
    p.add_argument("--rows", type=int, default=224)
    p.add_argument("--cols", type=int, default=160)
    p.add_argument("--m", type=int, default=10)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--json", help="write the result table as JSON here")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("outbox", help="undelivered results: list, retry")
    osub = p.add_subparsers(dest="outbox_command", required=True)
    q = osub.add_parser("list", help="pending and dead-lettered results")
    node_options(q)
    q.set_defaults(func=cmd_outbox)
    q = osub.add_parser("retry", help="queue export again (dead-lettered ones included)")
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
