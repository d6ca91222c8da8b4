"""Tiny synthetic breast volumes and readers for the dicom_node encoding/loading tests.

Plain numpy, no phantom model: a half-ellipse of "tissue" attached to the chest wall edge
(column 0 for ``L``, the last column for ``R``), some texture and an optional bright blob.
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset


def breast_volume(
    frames: int = 8, rows: int = 64, cols: int = 48, *, laterality: str = "L", seed: int = 0
) -> np.ndarray:
    """(frames, rows, cols) float32 in [0, 1]: tissue at the chest wall side, air elsewhere."""
    rng = np.random.default_rng(seed)
    y = (np.arange(rows)[:, None] - (rows - 1) / 2) / (rows / 2)
    x = np.arange(cols)[None, :] / (0.8 * cols)
    footprint = (x**2 + y**2) <= 1.0
    vol = np.zeros((frames, rows, cols), np.float32)
    texture = rng.uniform(0.35, 0.75, size=(frames, rows, cols)).astype(np.float32)
    vol[:, footprint] = texture[:, footprint]
    if laterality == "R":
        vol = np.ascontiguousarray(vol[..., ::-1])
    return vol


def blob_mask(shape: tuple[int, int, int], center: tuple[int, int, int], radius: int) -> np.ndarray:
    """Boolean ball of ``radius`` voxels around ``center`` (z, y, x)."""
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cz, cy, cx = center
    return (z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= radius**2


def source_frame_index(item: Dataset, sources: Sequence[Dataset]) -> int:
    """0-based source frame a per-frame functional group item derives from."""
    ref = item.DerivationImageSequence[0].SourceImageSequence[0]
    if len(sources) == 1:
        return int(ref.ReferencedFrameNumber) - 1
    return [str(s.SOPInstanceUID) for s in sources].index(str(ref.ReferencedSOPInstanceUID))


def seg_to_volume(seg: Dataset, sources: Sequence[Dataset]) -> np.ndarray:
    """Rebuild a (frames, rows, cols) bool mask on the source grid from a 1-segment SEG."""
    frames = int(getattr(sources[0], "NumberOfFrames", 1)) if len(sources) == 1 else len(sources)
    out = np.zeros((frames, int(seg.Rows), int(seg.Columns)), bool)
    pixels = seg.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        out[source_frame_index(item, sources)] |= pixels[i].astype(bool)
    return out


def roundtrip(ds: Dataset) -> Dataset:
    """``ds`` written as a DICOM file and read back (what a peer would receive)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer)


def assert_dciodvfy_clean(ds: Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` and assert dciodvfy reports no error (skipped without it)."""
    from dicom_node.standins.dciodvfy import dciodvfy_available, run_dciodvfy

    if not dciodvfy_available():
        return
    ds.save_as(path, enforce_file_format=True)
    errors, _ = run_dciodvfy(path)
    assert errors == [], errors
