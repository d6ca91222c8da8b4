"""Driving OHIF 3.13 in a playwright page and reading its state (``window.services``).

OHIF exposes its services (``displaySetService``, ``viewportGridService``,
``segmentationService``, ``cornerstoneViewportService``), ``window.cornerstone`` and
``window.cornerstoneTools``; the functions here use them to show display sets, move through
frames and read back what is drawn, so the test asserts on viewer state as well as on
screenshots. Frame numbers are the source's 1-based DICOM frame numbers, read from the
WADO-RS image ids (``.../frames/<n>``).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

#: Seconds to wait for the viewer to load a study or an object.
LOAD_TIMEOUT_S = 120

_DISPLAY_SETS = """() => window.services.displaySetService.getActiveDisplaySets().map(d => ({
  uid: d.displaySetInstanceUID, modality: d.Modality, description: d.SeriesDescription || '',
  series: d.SeriesInstanceUID}))"""

_FRAME = "id => Number(String(id).split('/frames/')[1])"


def open_study(page: Any, base_url: str, study_uid: str, display_sets: int) -> list[dict]:
    """Open the viewer on one study; wait for its display sets and the first image."""
    page.goto(f"{base_url}/viewer?StudyInstanceUIDs={study_uid}")
    page.wait_for_function(
        """n => window.services && window.services.displaySetService
              .getActiveDisplaySets().length >= n""",
        arg=display_sets, timeout=LOAD_TIMEOUT_S * 1000)
    page.wait_for_function(
        """() => { const s = window.services;
          const id = s.viewportGridService.getActiveViewportId();
          const v = id && s.cornerstoneViewportService.getCornerstoneViewport(id);
          return !!(v && v.getCurrentImageId && v.getCurrentImageId()); }""",
        timeout=LOAD_TIMEOUT_S * 1000)
    return page.evaluate(_DISPLAY_SETS)


def find(display_sets: list[dict], modality: str, description: str = "") -> str:
    """UID of the display set with this modality whose description starts with ``description``."""
    for ds in display_sets:
        if ds["modality"] == modality and ds["description"].startswith(description):
            return ds["uid"]
    raise AssertionError(f"no {modality} display set {description!r} in {display_sets}")


def grid(page: Any, rows: int, cols: int) -> list[str]:
    """Set the viewport grid layout; return the viewport ids, row by row."""
    return page.evaluate(
        """async ([rows, cols]) => {
          window.commandsManager.runCommand('setViewportGridLayout',
                                            {numRows: rows, numCols: cols});
          for (let i = 0; i < 100; i++) {
            const ids = Array.from(window.services.viewportGridService.getState().viewports.keys());
            if (ids.length === rows * cols) return ids;
            await new Promise(r => setTimeout(r, 100));
          }
          throw new Error('viewport grid did not change');
        }""", [rows, cols])


def show(page: Any, assignments: dict[str, str]) -> None:
    """Show display sets in viewports (``{viewport id: display set uid}``)."""
    page.evaluate(
        """a => window.services.viewportGridService.setDisplaySetsForViewports(
              Object.entries(a).map(([viewportId, uid]) =>
                ({viewportId, displaySetInstanceUIDs: [uid]})))""", assignments)


def wait_for_image(page: Any, viewport_id: str) -> None:
    """Wait until a stack viewport shows a loaded image (then one frame to paint)."""
    page.wait_for_function(
        """id => { const v = window.services.cornerstoneViewportService
                     .getCornerstoneViewport(id);
                   const imageId = v && v.getCurrentImageId && v.getCurrentImageId();
                   return !!(imageId && window.cornerstone.cache.getImage(imageId)); }""",
        arg=viewport_id, timeout=LOAD_TIMEOUT_S * 1000)
    page.wait_for_timeout(500)


def wait_for_volume(page: Any, volume_id: str) -> None:
    """Wait until cornerstone holds a fully loaded volume with this id."""
    page.wait_for_function(
        """id => { const v = window.cornerstone.cache.getVolume(id);
                   return !!(v && v.loadStatus && v.loadStatus.loaded); }""",
        arg=volume_id, timeout=LOAD_TIMEOUT_S * 1000)


def volume_slices(page: Any, viewport_id: str) -> list[dict]:
    """Every volume in a viewport: its id, type, frame per slice, per-slice mean values.

    Slices are in the volume's own order (cornerstone sorts them along the normal); a
    derived volume (the Parametric Map) has the frame numbers of its source.
    """
    return page.evaluate(
        f"""id => {{
          const frame = {_FRAME};
          const v = window.services.cornerstoneViewportService.getCornerstoneViewport(id);
          const ids = v.getActors().map(a => a.referencedId);
          let frames = null;
          return ids.map(volumeId => {{
            const vol = window.cornerstone.cache.getVolume(volumeId);
            const data = vol.voxelManager.getCompleteScalarDataArray();
            const [nx, ny, nz] = vol.dimensions; const per = nx * ny; const means = [];
            for (let k = 0; k < nz; k++) {{
              let sum = 0; for (let i = k * per; i < (k + 1) * per; i++) sum += data[i];
              means.push(sum / per);
            }}
            if (vol.imageIds && vol.imageIds.length && !isNaN(frame(vol.imageIds[0])))
              frames = vol.imageIds.map(frame);
            return {{volumeId, type: data.constructor.name, frames, means,
                     min: Math.min(...means), dims: vol.dimensions}};
          }});
        }}""", viewport_id)


def current_frame(page: Any, viewport_id: str) -> int:
    """Source frame number the viewport shows."""
    return page.evaluate(
        f"""id => ({_FRAME})(window.services.cornerstoneViewportService
                   .getCornerstoneViewport(id).getCurrentImageId())""", viewport_id)


def go_to_frame(page: Any, viewport_id: str, frame: int) -> int:
    """Scroll a viewport (stack or volume) until it shows source frame ``frame``.

    Returns the frame shown (the caller asserts on it).
    """
    return page.evaluate(
        f"""async ([id, target]) => {{
          const frame = {_FRAME};
          const v = window.services.cornerstoneViewportService.getCornerstoneViewport(id);
          const utils = window.cornerstone.utilities;
          const n = v.getNumberOfSlices ? v.getNumberOfSlices() : v.getImageIds().length;
          for (let i = 0; i < n; i++) {{
            await utils.jumpToSlice(v.element, {{imageIndex: i}});
            v.render();
            await new Promise(r => setTimeout(r, 30));
            if (frame(v.getCurrentImageId()) === target) break;
          }}
          await new Promise(r => setTimeout(r, 300));
          return frame(v.getCurrentImageId());
        }}""", [viewport_id, frame])


def labelmap_pixels(page: Any, segmentation_id: str) -> dict[int, int]:
    """Labelled pixels per source frame of a loaded segmentation (its labelmap images)."""
    counts = page.evaluate(
        f"""id => {{
          const frame = {_FRAME};
          const seg = window.services.segmentationService.getSegmentation(id);
          const lm = seg.representationData.Labelmap;
          const out = {{}};
          lm.imageIds.forEach((imageId, i) => {{
            const image = window.cornerstone.cache.getImage(imageId);
            const data = image.voxelManager.getScalarData();
            let n = 0; for (let j = 0; j < data.length; j++) if (data[j]) n++;
            out[frame(lm.referencedImageIds[i])] = n;
          }});
          return out;
        }}""", segmentation_id)
    return {int(k): int(v) for k, v in counts.items()}


def segment_colour(page: Any, viewport_id: str, segmentation_id: str) -> list[int]:
    """RGBA OHIF draws segment 1 of a segmentation with in a viewport."""
    return page.evaluate(
        """([vp, id]) => Array.from(window.services.segmentationService
              .getSegmentColor(vp, id, 1))""", [viewport_id, segmentation_id])


def sr_annotations(page: Any) -> list[dict]:
    """The SR outlines cornerstone holds, one per finding: frame, label lines.

    OHIF may register the same outline more than once (one per viewport that showed the
    SR); they share the finding's Tracking Unique Identifier and are returned once.
    """
    found = page.evaluate(
        f"""() => {{
          const frame = {_FRAME};
          return window.cornerstoneTools.annotation.state.getAllAnnotations()
            .filter(a => a.metadata.toolName === 'DICOMSRDisplay')
            .map(a => ({{uid: a.data.TrackingUniqueIdentifier || a.annotationUID,
                        frame: frame(a.metadata.referencedImageId),
                        labels: (a.data.labels || []).map(l => `${{l.label}}: ${{l.value}}`)}}));
        }}""")
    return list({a["uid"]: a for a in found}.values())


def activate(page: Any, viewport_id: str) -> None:
    """Make a viewport the active one (OHIF asks about loading a SEG only in that one)."""
    page.evaluate("id => window.services.viewportGridService.setActiveViewportId(id)",
                  viewport_id)


def viewport_image(page: Any, viewport_id: str, path: Any = None) -> np.ndarray:
    """Screenshot of one viewport as an (h, w, 3) uint8 array (also saved to ``path``)."""
    png = page.locator(f'[data-viewportid="{viewport_id}"]').screenshot()
    if path is not None:
        with open(path, "wb") as f:
            f.write(png)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def hue_histogram(rgb: np.ndarray, min_saturation: float = 0.35, bins: int = 12
                  ) -> tuple[float, np.ndarray]:
    """Fraction of saturated (coloured) pixels and their hue histogram (fractions)."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"), dtype=np.float32) / 255.0
    coloured = (hsv[..., 1] >= min_saturation) & (hsv[..., 2] >= 0.15)
    fraction = float(coloured.mean())
    if not coloured.any():
        return fraction, np.zeros(bins)
    counts, _ = np.histogram(hsv[..., 0][coloured], bins=bins, range=(0.0, 1.0))
    return fraction, counts / counts.sum()


def colour_pixels(rgb: np.ndarray, target: tuple[int, int, int], tolerance: int = 60) -> int:
    """Pixels within ``tolerance`` (per channel) of ``target``."""
    diff = np.abs(rgb.astype(np.int32) - np.asarray(target, dtype=np.int32))
    return int((diff <= tolerance).all(axis=-1).sum())
