"""Which result objects are made and which destination gets which (real storescp peers)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from pynetdicom.sop_class import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    MammographyCADSRStorage,
    ParametricMapStorage,
    SegmentationStorage,
)

from dicom_node.config import Destination, Settings
from dicom_node.result_kinds import DEFAULT_KINDS, ResultKind, kind_of, object_file_name
from dicom_node.results import ResultFolder, results_root
from dicom_node.spool import SeriesRef
from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy
from tests.helpers.servers import start_storescp, stop_process
from workers import pipeline

SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture
def analyzed(settings: Settings, spooled_series: SeriesRef,
             low_threshold_bundle: Path) -> ResultFolder:
    outcome = pipeline.analyze(Path(spooled_series.directory), results_root(settings.spool_dir),
                               bundle=low_threshold_bundle)
    return outcome.folder


def _classes(paths: list[Path]) -> list[str]:
    return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in paths)


def test_kind_names_and_file_prefixes() -> None:
    assert kind_of(object_file_name(ResultKind.SPREAD_MAP, "1.2.3")) is ResultKind.SPREAD_MAP
    assert kind_of(object_file_name(None, "1.2.3")) is None  # a rejection note
    assert kind_of("PM_1.2.dcm") is ResultKind.PARAMETRIC_MAP
    assert kind_of("OT_1.2.dcm") is ResultKind.PARAMETRIC_MAP  # folders written before kinds
    with pytest.raises(ValueError, match="no known kind"):
        kind_of("XX_1.2.dcm")
    assert len({k.prefix for k in ResultKind}) == len(ResultKind)


def test_destination_objects_are_validated() -> None:
    dest = Destination(ae_title="A", host="h", port=1)
    assert dest.objects == list(DEFAULT_KINDS)
    with pytest.raises(ValidationError, match="key-images"):
        Destination(ae_title="A", host="h", port=1, objects=["burned-in"])
    with pytest.raises(ValidationError, match="twice"):
        Destination(ae_title="A", host="h", port=1, objects=["key-images", "key-images"])
    with pytest.raises(ValidationError):
        Destination(ae_title="A", host="h", port=1, objects=[])
    settings = Settings(destinations=[
        dest, Destination(ae_title="B", host="h", port=2, objects=["spread-map", "segmentation"])])
    assert settings.result_kinds == [ResultKind.PARAMETRIC_MAP, ResultKind.SEGMENTATION,
                                     ResultKind.FINDINGS_SR, ResultKind.SPREAD_MAP]


def test_analyze_stores_spread_and_expected_tissue(analyzed: ResultFolder) -> None:
    summary = analyzed.summary()
    heatmap, spread, expected = analyzed.heatmap(), analyzed.spread(), analyzed.expected()
    assert spread is not None and spread.shape == heatmap.shape
    assert np.isfinite(spread).all() and spread.min() >= 0 and spread.max() > 0
    assert summary["spread"]["mode"] == summary["scoring"]["mode"] == "exact"
    assert expected is not None and expected.frames
    assert [f + 1 for f in expected.frames] == summary["expected_frames"]
    assert expected.images.shape == expected.holes.shape == (len(expected.frames),
                                                             *heatmap.shape[1:])
    assert all(h.any() and not h.all() for h in expected.holes)


def test_every_kind_encodes_dciodvfy_clean(analyzed: ResultFolder) -> None:
    paths = pipeline.encode(analyzed.path, kinds=list(ResultKind))
    made = {kind_of(p) for p in paths}
    assert made == set(ResultKind)
    assert analyzed.encoded_kinds() == set(ResultKind)
    classes = _classes(paths)
    for uid in (ParametricMapStorage, SegmentationStorage, Comprehensive3DSRStorage,
                MammographyCADSRStorage, KeyObjectSelectionDocumentStorage):
        assert str(uid) in classes
    assert any(c.startswith(SECONDARY_CAPTURE_PREFIX) for c in classes)
    descriptions = {pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription for p in paths}
    assert any(d.startswith("PICARD spread") for d in descriptions)
    numbers = {}
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        numbers.setdefault(ds.SeriesInstanceUID, set()).add(int(ds.SeriesNumber))
    assert all(len(n) == 1 for n in numbers.values())
    assert len({n.pop() for n in numbers.values()}) == len(numbers)  # one number per series
    if dciodvfy_available():
        for p in paths:
            errors, _ = run_dciodvfy(p)
            assert not errors, f"{p.name}: {errors}"


def test_each_destination_gets_its_kinds(tmp_path: Path, settings: Settings,
                                         analyzed: ResultFolder, orthanc_factory) -> None:
    """A SEG-capable PACS (storescp) gets the default kinds; a PACS for viewers without SEG
    (a real Orthanc, which must accept every SOP class we send) the CAD SR, key images and
    key-object list; a destination added later gets its kind on the next export."""
    viewer_kinds = ["key-images", "key-object-selection", "mammography-cad-sr"]
    orthanc = orthanc_factory()
    seg_pacs, seg_port = start_storescp(tmp_path / "seg-pacs")
    try:
        plain = Destination(ae_title="STORESCP", host="127.0.0.1", port=seg_port)
        workstation = Destination(ae_title=orthanc.ae_title, host="127.0.0.1",
                                  port=orthanc.dicom_port, objects=viewer_kinds)
        settings = settings.model_copy(update={"destinations": [plain, workstation]})
        pipeline.encode(analyzed.path, spool_dir=settings.spool_dir,
                        kinds=settings.result_kinds)
        report = pipeline.export(analyzed.path, settings)
        assert report.complete and report.sent == ["STORESCP", orthanc.ae_title]
        seg_classes = _classes(sorted((tmp_path / "seg-pacs").iterdir()))
        assert sorted(seg_classes) == sorted(map(str, (ParametricMapStorage, SegmentationStorage,
                                                       Comprehensive3DSRStorage)))
        stored = orthanc.instances_of_study(analyzed.summary()["study_uid"])
        expected = analyzed.objects([ResultKind(k) for k in viewer_kinds])
        assert len(stored) == len(expected) >= 3
        pulled = [orthanc.download(item["ID"], tmp_path / f"{n}.dcm")
                  for n, item in enumerate(stored)]
        ws_classes = _classes(pulled)
        assert str(MammographyCADSRStorage) in ws_classes
        assert str(KeyObjectSelectionDocumentStorage) in ws_classes
        assert any(c.startswith(SECONDARY_CAPTURE_PREFIX) for c in ws_classes)
        assert not {str(ParametricMapStorage), str(SegmentationStorage)} & set(ws_classes)

        # a destination added later gets its kinds, encoded on the next export
        spread_pacs, spread_port = start_storescp(tmp_path / "spread-pacs")
        try:
            later = Destination(ae_title="STORESCP", host="127.0.0.1", port=spread_port,
                                objects=["spread-map"])
            settings = settings.model_copy(update={"destinations": [plain, workstation, later]})
            assert ResultKind.SPREAD_MAP not in analyzed.encoded_kinds()
            report = pipeline.export(analyzed.path, settings)
            assert report.complete and len(report.sent) == 1
            (spread_file,) = sorted((tmp_path / "spread-pacs").iterdir())
            assert pydicom.dcmread(spread_file).SeriesDescription.startswith("PICARD spread")
        finally:
            stop_process(spread_pacs)
    finally:
        stop_process(seg_pacs)


def test_example_config_names_valid_kinds() -> None:
    from dicom_node.config import load_settings

    example = Path(__file__).resolve().parents[3] / "deploy" / "picard-node.example.yaml"
    settings = load_settings(example)
    assert ResultKind.MAMMOGRAPHY_CAD_SR in settings.result_kinds
    assert settings.destinations[0].objects == list(DEFAULT_KINDS)


def test_destination_option_names_kinds() -> None:
    import argparse

    from workers.cli import _parse_destination

    plain = _parse_destination("PACS@10.0.0.1:104")
    assert plain.objects == list(DEFAULT_KINDS)
    every = _parse_destination("WS@10.0.0.2:11112=all")
    assert every.objects == list(ResultKind) and every.port == 11112
    chosen = _parse_destination("WS@h:1=mammography-cad-sr,key-images")
    assert chosen.objects == [ResultKind.MAMMOGRAPHY_CAD_SR, ResultKind.KEY_IMAGES]
    with pytest.raises(argparse.ArgumentTypeError, match="kinds: parametric-map"):
        _parse_destination("WS@h:1=burned-in")
