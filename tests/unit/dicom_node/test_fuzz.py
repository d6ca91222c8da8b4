"""Bad input on the receive → load path: refused, or loaded, or a clear VolumeError.

Every case goes through the storage SCP's receive-time check
(:func:`dicom_node.instances.read_instance_header`) and, when accepted there, through
:func:`dicom_node.volume.load_series`. The only acceptable outcomes are

* ``refused`` — :class:`~dicom_node.instances.InvalidInstanceError` with a failure status
  (the SCP answers it and quarantines the file),
* ``volume error`` — :class:`~dicom_node.volume.VolumeError` with a reason (the pipeline
  quarantines the series),
* ``loaded`` — a volume of the announced shape with finite pixels in [0, 1];

any other exception, or a case running longer than :data:`CASE_SECONDS`, fails the test.
Property-based cases are bounded and derandomized; each test prints a summary line with its
case count.

Known gap: until ``load_series`` turns every malformed-header error into ``VolumeError``
(a patch is with the lead), a test whose only problem is such a leak is reported as
``xfail`` naming the leaked exception types; the ``loader_gap`` fixture checks that the
gap still exists, so once it is fixed any leak fails the test.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import (
    CTImageStorage,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RTPlanStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from dicom_node.config import Settings
from dicom_node.instances import (
    ACCEPTED_SOP_CLASSES,
    InvalidInstanceError,
    StoreStatus,
    read_instance_header,
)
from dicom_node.scp import StorageSCP
from dicom_node.scu import ExportError, send_datasets
from dicom_node.standins.synthetic import write_bto
from dicom_node.volume import VolumeError, load_series

#: Longest a single case may take (a hang fails the test).
CASE_SECONDS = 10
#: Statuses a refusal may carry.
REFUSALS = {StoreStatus.CANNOT_UNDERSTAND, StoreStatus.DATASET_MISMATCH}
FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# --------------------------------------------------------------------------- helpers


class CaseTimeout(BaseException):
    """A case ran longer than CASE_SECONDS (a BaseException: nothing may swallow it)."""


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"case ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def receive_then_load(path: Path) -> str:
    """Run one file through the receive check and the loader; return the outcome."""
    with time_limit(CASE_SECONDS):
        try:
            header = read_instance_header(path)
        except InvalidInstanceError as exc:
            assert exc.status in REFUSALS, f"unexpected status 0x{exc.status:04X}"
            assert str(exc)
            return "refused"
        if header.sop_class_uid not in ACCEPTED_SOP_CLASSES:
            return "refused"  # the SCP refuses the SOP class (negotiation, or 0x0122/0xA900)
        try:
            volume = load_series([path])
        except VolumeError as exc:
            assert str(exc)
            return "volume error"
        except Exception as exc:  # noqa: BLE001 - recorded here, judged by finish()
            return f"LEAKED {type(exc).__name__}"
    assert volume.pixels.shape == (header.number_of_frames, header.rows, header.columns)
    assert np.isfinite(volume.pixels).all()
    assert volume.pixels.min() >= 0.0 and volume.pixels.max() <= 1.0
    return "loaded"


def report(capsys: pytest.CaptureFixture, name: str, counts: Counter) -> None:
    with capsys.disabled():
        print(f"\n[fuzz] {name}: {sum(counts.values())} cases, "
              + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))


def finish(counts: Counter, loader_gap: str | None) -> None:
    """Fail on exceptions other than VolumeError from the loader (xfail while the gap is known)."""
    leaks = {k: v for k, v in counts.items() if k.startswith("LEAKED")}
    if not leaks:
        return
    message = f"load_series raised other exceptions than VolumeError: {leaks}"
    if loader_gap is not None:
        pytest.xfail(f"{message} (known gap: {loader_gap})")
    pytest.fail(message)


def tiny_volume(frames: int, rows: int, cols: int) -> np.ndarray:
    vol = np.zeros((frames, rows, cols), np.float32)
    vol[:, :, : cols // 2] = np.linspace(0.3, 0.8, rows, dtype=np.float32)[:, None]
    return vol


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Small valid instances: BTO (explicit VR, JPEG 2000) and one implicit-VR MG slice."""
    d = tmp_path_factory.mktemp("seeds")
    common = dict(laterality="L", view="CC", pixel_spacing_mm=0.1, slice_thickness_mm=1.0)
    [bto] = write_bto(tiny_volume(3, 16, 12), d / "bto", seed=1, **common)
    [j2k] = write_bto(tiny_volume(2, 32, 32), d / "j2k", seed=2,
                      transfer_syntax=JPEG2000Lossless, **common)
    slices = write_bto(tiny_volume(2, 16, 12), d / "slices", seed=3, per_slice=True, **common)
    ds = pydicom.dcmread(slices[0])
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = d / "implicit.dcm"
    ds.save_as(implicit, enforce_file_format=True, implicit_vr=True)
    out = {name: p.read_bytes() for name, p in
           (("bto", bto), ("j2k", j2k), ("implicit_slice", implicit))}
    for name, data in out.items():  # the seeds themselves must load
        path = d / f"check-{name}.dcm"
        path.write_bytes(data)
        assert receive_then_load(path) == "loaded", name
    return out


@pytest.fixture(scope="module")
def loader_gap(seeds: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory) -> str | None:
    """What load_series leaks for a Plane Position that is not a number (None: VolumeError)."""
    ds = pydicom.dcmread(io.BytesIO(seeds["bto"]))
    position = ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0]
    _raw(position, "ImagePositionPatient", "DS", "0\\abc\\1")
    path = tmp_path_factory.mktemp("gap") / "gap.dcm"
    ds.save_as(path, enforce_file_format=False)
    read_instance_header(path)  # readable: the receive check leaves value judgement to loading
    try:
        load_series([path])
    except VolumeError:
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {exc}"
    pytest.fail("a non-numeric ImagePositionPatient loaded without error")


# --------------------------------------------------------------------------- byte mutations
@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    kind = draw(st.sampled_from(["truncate", "overwrite", "delete", "insert", "duplicate"]))
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=4))
            data[pos:pos + len(chunk)] = chunk
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
        if not data:
            break
    return bytes(data)


def test_fuzz_mutated_bytes(seeds: dict[str, bytes], tmp_path: Path, capsys,
                            loader_gap: str | None) -> None:
    counts: Counter = Counter()
    path = tmp_path / "case.dcm"

    @FUZZ
    @given(data=mutated_bytes(seeds))
    def case(data: bytes) -> None:
        path.write_bytes(data)
        counts[receive_then_load(path)] += 1

    case()
    report(capsys, "mutated bytes", counts)
    assert counts["refused"] > 0 and counts["loaded"] > 0
    finish(counts, loader_gap)


# --------------------------------------------------------------------------- attribute mutations
_US = ["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "SamplesPerPixel",
       "PixelRepresentation"]


@st.composite
def mutated_dataset(draw: st.DrawFn, seeds: dict[str, bytes]) -> bytes:
    name = draw(st.sampled_from(sorted(seeds)))
    ds = pydicom.dcmread(io.BytesIO(seeds[name]))
    kind = draw(st.sampled_from(["us", "frames", "pixels", "delete", "functional groups",
                                 "positions", "photometric", "sop class"]))
    _mutate(draw, ds, kind)
    buffer = io.BytesIO()
    try:
        ds.save_as(buffer, enforce_file_format=False)
    except Exception:  # noqa: BLE001 - pydicom refuses to write some values: not a case
        assume(False)
    return buffer.getvalue()


def _raw(ds: pydicom.Dataset, keyword: str, vr: str, text: str) -> None:
    """Set an element to exactly these characters (no validation, no conversion)."""
    value = text.encode("ascii")
    value += b" " * (len(value) % 2)
    tag = Tag(keyword)
    ds[tag] = RawDataElement(tag, vr, len(value), value, 0, False, True)


def _mutate(draw: st.DrawFn, ds: pydicom.Dataset, kind: str) -> None:
    if kind == "us":
        setattr(ds, draw(st.sampled_from(_US)), draw(st.integers(0, 65535)))
    elif kind == "frames":
        _raw(ds, "NumberOfFrames", "IS", draw(st.sampled_from(
            ["0", "-1", "1", "2", "4", "513", "1000000000", "x", "", "2.5"])))
    elif kind == "pixels":
        pixels = ds.PixelData
        if ds.file_meta.TransferSyntaxUID.is_encapsulated:
            assume(False)  # byte mutations cover encapsulated data
        ds.PixelData = pixels[: draw(st.integers(0, len(pixels)))]
    elif kind == "delete":
        keyword = draw(st.sampled_from(sorted(e.keyword for e in ds if e.keyword)))
        delattr(ds, keyword)
    elif kind == "functional groups":
        assume("PerFrameFunctionalGroupsSequence" in ds)
        what = draw(st.sampled_from(["shared", "per-frame", "one item", "measures",
                                     "position"]))
        if what == "shared":
            del ds.SharedFunctionalGroupsSequence
        elif what == "per-frame":
            del ds.PerFrameFunctionalGroupsSequence
        elif what == "one item":
            del ds.PerFrameFunctionalGroupsSequence[0]
        elif what == "measures":
            del ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence
        else:
            del ds.PerFrameFunctionalGroupsSequence[-1].PlanePositionSequence
    elif kind == "positions":
        assume("PerFrameFunctionalGroupsSequence" in ds)
        items = ds.PerFrameFunctionalGroupsSequence
        choice = draw(st.sampled_from(["duplicate", "random", "not a number", "two values"]))
        target = items[draw(st.integers(0, len(items) - 1))].PlanePositionSequence[0]
        if choice == "duplicate":
            target.ImagePositionPatient = items[0].PlanePositionSequence[0].ImagePositionPatient
        elif choice == "random":
            target.ImagePositionPatient = [draw(st.floats(-1e6, 1e6)) for _ in range(3)]
        elif choice == "not a number":
            _raw(target, "ImagePositionPatient", "DS", "0\\abc\\1")
        else:
            target.ImagePositionPatient = [0, 0]
    elif kind == "photometric":
        ds.PhotometricInterpretation = draw(st.sampled_from(
            ["RGB", "MONOCHROME1", "PALETTE COLOR", "YBR_FULL", ""]))
    else:
        ds.SOPClassUID = draw(st.sampled_from([SecondaryCaptureImageStorage, CTImageStorage,
                                               RTPlanStorage]))


def test_fuzz_mutated_attributes(seeds: dict[str, bytes], tmp_path: Path, capsys,
                                 loader_gap: str | None) -> None:
    counts: Counter = Counter()
    path = tmp_path / "case.dcm"

    @FUZZ
    @given(data=mutated_dataset(seeds))
    def case(data: bytes) -> None:
        path.write_bytes(data)
        counts[receive_then_load(path)] += 1

    case()
    report(capsys, "mutated attributes", counts)
    assert counts["refused"] > 0 and counts["volume error"] > 0 and counts["loaded"] > 0
    finish(counts, loader_gap)


# --------------------------------------------------------------------------- pydicom's test files
_BAD_NAME = re.compile(r"bad|no_?meta|NoMeta|trunc|invalid|missing|mismatch|empty|corrupt|"
                       r"too_short|embedded-sequence|odd", re.IGNORECASE)


def _pydicom_bad_files() -> list[Path]:
    """pydicom's broken/odd test files that ship with the installed pydicom (no download)."""
    return sorted({Path(p) for p in get_testdata_files()
                   if Path(p).is_file() and Path(p).suffix == ".dcm"
                   and _BAD_NAME.search(Path(p).name)}, key=lambda p: p.name)


def test_pydicom_corrupt_test_files(tmp_path: Path, capsys, loader_gap: str | None) -> None:
    files = _pydicom_bad_files()
    if not files:
        pytest.skip("no matching pydicom test files installed")
    counts: Counter = Counter()
    outcomes = {}
    for src in files:
        path = tmp_path / src.name
        shutil.copyfile(src, path)
        outcome = receive_then_load(path)
        counts[outcome] += 1
        outcomes[src.name] = outcome
    report(capsys, "pydicom test files", counts)
    with capsys.disabled():
        print("[fuzz]   " + "; ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())))
    for name in ("no_meta.dcm", "MR_truncated.dcm", "rtplan_truncated.dcm"):
        if name in outcomes:
            assert outcomes[name] == "refused", name
    finish(counts, loader_gap)


# --------------------------------------------------------------------------- over the network
def _bad_instances(seeds: dict[str, bytes], d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected refusal text); each is structurally a complete data set."""
    out: dict[str, tuple[Path, str]] = {}

    def save(name: str, ds: pydicom.Dataset, expect: str) -> None:
        path = d / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=False)
        out[name] = (path, expect)

    bto = lambda: pydicom.dcmread(io.BytesIO(seeds["bto"]))  # noqa: E731
    short = bto()
    short.PixelData = short.PixelData[:100]
    save("short-pixels", short, "pixel data is 100 bytes")
    bomb = bto()
    bomb.Rows = bomb.Columns = 65535
    bomb.NumberOfFrames = 1_000_000
    save("memory-bomb", bomb, "exceed the node's limit")
    fragments = pydicom.dcmread(io.BytesIO(seeds["j2k"]))
    fragments.NumberOfFrames = 5
    save("too-few-fragments", fragments, "2 fragments for 5 frames")
    no_rows = bto()
    del no_rows.Rows
    save("no-rows", no_rows, "Rows missing")
    return out


def test_bad_instances_over_the_network(seeds: dict[str, bytes], tmp_path: Path,
                                        capsys) -> None:
    scp = StorageSCP(Settings(host="127.0.0.1", port=0, spool_dir=tmp_path / "spool",
                              series_quiet_seconds=30, min_free_bytes=0), lambda ref: None)
    scp.start()
    counts: Counter = Counter()
    try:
        for name, (path, expect) in _bad_instances(seeds, tmp_path).items():
            with pytest.raises(ExportError) as info:
                send_datasets([path], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                              calling_ae_title="MODALITY1", timeout=20)
            assert info.value.status in REFUSALS, name
            reasons = [p.read_text() for p in scp.spool.quarantine_dir.glob("*.reason.txt")]
            assert any(expect in r for r in reasons), (name, reasons)
            counts["refused"] += 1
        # a BTO without functional groups passes the cheap check; loading refuses it
        no_fg = pydicom.dcmread(io.BytesIO(seeds["bto"]))
        del no_fg.SharedFunctionalGroupsSequence
        no_fg.SOPInstanceUID = no_fg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        no_fg.SeriesInstanceUID = generate_uid()
        no_fg.save_as(tmp_path / "no-fg.dcm", enforce_file_format=False)
        good = tmp_path / "good.dcm"
        good.write_bytes(seeds["bto"])
        for path in (tmp_path / "no-fg.dcm", good):
            send_datasets([path], ae_title="PICARD", host="127.0.0.1", port=scp.port,
                          calling_ae_title="MODALITY1", timeout=20)
        stored = {p.name: p for p in (scp.spool.root / "incoming").rglob("*.dcm")}
        assert len(stored) == 2  # the SCP kept serving
        no_fg_uid = pydicom.dcmread(tmp_path / "no-fg.dcm", stop_before_pixels=True).SOPInstanceUID
        with pytest.raises(VolumeError, match="Functional Groups"):
            load_series([stored[f"{no_fg_uid}.dcm"]])
        counts["volume error"] += 1
        good_uid = pydicom.dcmread(good, stop_before_pixels=True).SOPInstanceUID
        assert load_series([stored[f"{good_uid}.dcm"]]).pixels.shape == (3, 16, 12)
        counts["loaded"] += 1
    finally:
        scp.stop()
    report(capsys, "over the network", counts)


def test_receive_check_refuses_absurd_frame_count(tmp_path: Path) -> None:
    """A CT image claiming 1000 frames is refused by its header alone."""
    ds = pydicom.dcmread(get_testdata_files("CT_small.dcm")[0])
    ds.NumberOfFrames = 1000
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(InvalidInstanceError, match="exceed the node's limit"):
        read_instance_header(path)

