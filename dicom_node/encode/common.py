"""What every encoded object shares: output UIDs, the source grid, its order and laterality.

Used by the per-object modules of :mod:`dicom_node.encode` (``pm``, ``seg``, ``sr``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, generate_uid

from dicom_node.volume import VolumeError, slice_order

#: Manufacturer written into every object the node makes.
MANUFACTURER = "PICARD Node"
#: Device Serial Number written into every object the node makes.
DEVICE_SERIAL = "0"


def output_uid(seed: str, *parts: str) -> UID:
    """Deterministic UID for one output object or series.

    Parameters
    ----------
    seed : str
        The job's ``output_uid_seed``.
    *parts : str
        What the UID names, e.g. ``("seg", "series")``.
    """
    return generate_uid(entropy_srcs=["picard-node-output", seed, *parts])


def source_grid(source_datasets: Sequence[Dataset]) -> tuple[int, int, int]:
    """(frames, rows, cols) of a source: one multi-frame object or single-frame instances.

    Raises
    ------
    ValueError
        If ``source_datasets`` is empty or mixes sizes, or holds several multi-frame objects.
    """
    if not source_datasets:
        raise ValueError("source_datasets is empty")
    sizes = {(int(ds.Rows), int(ds.Columns)) for ds in source_datasets}
    if len(sizes) != 1:
        raise ValueError(f"source datasets differ in size: {sorted(sizes)}")
    rows, cols = sizes.pop()
    if len(source_datasets) == 1:
        return int(getattr(source_datasets[0], "NumberOfFrames", 1) or 1), rows, cols
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) != 1 for ds in source_datasets):
        raise ValueError("several source datasets given, but not all are single-frame")
    return len(source_datasets), rows, cols


def source_laterality(source_datasets: Sequence[Dataset]) -> str | None:
    """Laterality the source header states (FrameLaterality, ImageLaterality, Laterality)."""
    ds = source_datasets[0]
    holders: list[Dataset] = []
    for seq in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if ds.get(seq):
            holders.append(ds[seq].value[0])
    for holder in holders:
        if holder.get("FrameAnatomySequence"):
            lat = str(holder.FrameAnatomySequence[0].get("FrameLaterality", "")).upper()
            if lat in ("L", "R"):
                return lat
    for attr in ("ImageLaterality", "Laterality"):
        lat = str(ds.get(attr, "") or "").upper()
        if lat in ("L", "R"):
            return lat
    return None


def frame_ordered(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    """Source headers in heatmap frame order (the order :func:`load_series` gives).

    A multi-frame source is returned as is; single-frame instances are sorted along the slice
    normal (else by InstanceNumber), so callers may pass them in any order.
    """
    datasets = list(source_datasets)
    if len(datasets) <= 1:
        return datasets
    try:
        order, _ = slice_order(datasets)
    except VolumeError as exc:
        raise ValueError(f"cannot order the source instances: {exc}") from exc
    return [datasets[i] for i in order]


def check_heatmap(source_datasets: Sequence[Dataset], heatmap: np.ndarray) -> np.ndarray:
    """The heatmap as float32 (frames, rows, cols), checked against the source grid.

    Raises
    ------
    ValueError
        If its shape differs from :func:`source_grid` or it holds NaN or infinite values.
    """
    grid = source_grid(source_datasets)
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 2 and grid[0] == 1:
        heat = heat[None]
    if heat.shape != grid:
        raise ValueError(
            f"heatmap shape {heat.shape} does not match the source grid {grid} "
            "(frames, rows, cols)"
        )
    if not np.isfinite(heat).all():
        raise ValueError("heatmap contains NaN or infinite values")
    return heat


def ordered_and_checked(
    source_datasets: Sequence[Dataset], heatmap: np.ndarray
) -> tuple[list[Dataset], np.ndarray]:
    """Sources in frame order (:func:`frame_ordered`) and the heatmap checked against them."""
    ordered = frame_ordered(source_datasets)
    return ordered, check_heatmap(ordered, heatmap)


def series_and_device(
    kind: str, output_uid_seed: str, series_number: int, model_name: str, model_version: str
) -> dict[str, Any]:
    """Series/instance identity and equipment keywords of a highdicom derived object.

    ``kind`` (``"pm"``, ``"seg"``) keeps the UIDs of the objects of one result apart.
    """
    return dict(
        series_instance_uid=output_uid(output_uid_seed, kind, "series"),
        series_number=series_number,
        sop_instance_uid=output_uid(output_uid_seed, kind, "instance"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model_name,
        software_versions=model_version,
        device_serial_number=DEVICE_SERIAL,
    )


def fix_dimension_uids(obj: Dataset, uid: str) -> None:
    """Replace highdicom's random Dimension Organization UID with a deterministic one."""
    for seq in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in obj.get(seq) or []:
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid
