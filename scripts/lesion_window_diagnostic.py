"""Why a bundle ranks masses where it does: the window centred on each mass against every
tissue window of the same slice, on validation phantoms (never the test seeds).

    python scripts/lesion_window_diagnostic.py --model models/bundles/default [--count 4]

For each validation volume (seeds 5000.., built as ``picard-node evaluate`` builds them, at
0.4 mm) the mass's centre slice is resampled to the model's grid; windows are taken every 4
px where the hole is >= 90 % tissue, plus the window centred on the mass. Printed per mass:
the percentile of the mass window among the slice's windows for the single deterministic
completion distance (image space), the minimum and the mean of M = 10 dropout completions
(at the card's p); the pixel SD of the real hole content (texture), the mean offset real minus
completion (what the network did not expect), the completions' per-pixel spread, and the
correlation of the single-completion distance with the real hole's SD over all windows.
Then the same windows under three scores without texture, to test that diagnosis: MeanCD
after a Gaussian low-pass of real minus completion (sigma ``--lowpass`` mm, default 2), the
mean over M of the hole-mean offset real minus completion (signed: brighter than expected),
and the hole-mean intensity itself (a trivial brightness score, no network).
Intensities are the network's [-1, 1].
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.heatmap import centred_mask, normalize_windows  # noqa: E402
from models.lab.evaluate import synthetic_exams  # noqa: E402
from models.picard import Picard  # noqa: E402
from models.stream import grid_size, load_slice  # noqa: E402

EXAM_SPACING = 0.4


def _windows(img: np.ndarray, centre: tuple[int, int], window: int, hole: int,
             step: int = 4) -> np.ndarray:
    """Tissue windows every ``step`` px, the window centred on ``centre`` last."""
    padded = np.pad(img, window, mode="symmetric")
    out = []

    def cut(y: int, x: int) -> np.ndarray:
        return padded[y + window - window // 2:y + window + window // 2,
                      x + window - window // 2:x + window + window // 2]

    for y in range(0, img.shape[0], step):
        for x in range(0, img.shape[1], step):
            h = img[max(0, y - hole // 2):y + hole // 2, max(0, x - hole // 2):x + hole // 2]
            if h.size and (h > 0.02).mean() >= 0.9:
                out.append(cut(y, x))
    out.append(cut(*centre))
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "bundles" / "default")
    ap.add_argument("--count", type=int, default=4, help="validation volumes (seeds 5000..)")
    ap.add_argument("--seed", type=int, default=0, help="dropout draws")
    ap.add_argument("--lowpass", type=float, default=2.0,
                    help="sigma in mm of the low-pass applied to real minus completion")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    model = Picard.from_bundle(args.model)
    card = model.card
    window, hole, spacing = int(card["window"]), int(card["hole"]), float(card["pixel_spacing_mm"])
    p = float(card["dropout"]["p"])
    a = (window - hole) // 2
    mask = centred_mask(window, hole)
    print(f"{args.model}: grid {spacing:g} mm, hole {hole * spacing:.1f} mm, M=10, p={p:g}")
    for exam in synthetic_exams(5000, args.count, slices=24, rows=224, cols=160,
                                pixel_spacing_mm=EXAM_SPACING):
        les = exam.lesions[0]
        cz, cy, cx = (int(round(c)) for c in les["center_zyx"])
        size = grid_size(exam.volume.shape[1:], (EXAM_SPACING, EXAM_SPACING), spacing)
        img = load_slice(exam.volume[cz], size, None)
        f = EXAM_SPACING / spacing
        wins = _windows(img, (int(cy * f), int(cx * f)), window, hole)
        x = normalize_windows(torch.from_numpy(wins)[:, None].float(), card["intensity"]["mode"])
        with torch.inference_mode():
            single = model.complete(x, mask, 1, False)[:, 0, 0, a:a + hole, a:a + hole]
            multi = model.complete(x, mask, 10, True)[:, :, 0, a:a + hole, a:a + hole]
        real = x[:, 0, a:a + hole, a:a + hole]
        d1 = (real - single).flatten(1).norm(dim=1).numpy()
        dm = (real[:, None] - multi).flatten(2).norm(dim=2)
        mcd, mean = dm.min(1).values.numpy(), dm.mean(1).numpy()
        sd = real.flatten(1).std(1).numpy()
        off = (real.flatten(1).mean(1) - single.flatten(1).mean(1)).numpy()
        spread = multi.std(1).mean((1, 2)).numpy()
        residual = (real[:, None] - multi).numpy()
        sigma = args.lowpass / spacing
        smooth = ndimage.gaussian_filter(residual, (0, 0, sigma, sigma), mode="nearest")
        lowpass = np.sqrt((smooth ** 2).sum((2, 3))).mean(1)
        contrast = residual.mean((2, 3)).mean(1)
        level = real.flatten(1).mean(1).numpy()

        def pct(v: np.ndarray) -> float:
            return float((v[:-1] < v[-1]).mean())

        print(f"mass {les['diameter_mm']:.0f} mm, {len(d1) - 1} windows: percentile single "
              f"{pct(d1):.2f}, MCD {pct(mcd):.2f}, MeanCD {pct(mean):.2f}; hole SD {sd[-1]:.3f} "
              f"(median {np.median(sd[:-1]):.3f}); offset {off[-1]:+.3f} (median |offset| "
              f"{np.median(np.abs(off[:-1])):.3f}); spread {spread[-1]:.3f} (median "
              f"{np.median(spread[:-1]):.3f}); corr(single, hole SD) "
              f"{np.corrcoef(d1, sd)[0, 1]:+.2f}; without texture: percentile low-pass MeanCD "
              f"{pct(lowpass):.2f}, mean offset {pct(contrast):.2f}, hole-mean intensity "
              f"{pct(level):.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
