"""How the default bundle's dropout completions differ from each other (a diagnostic).

Draws M = 10 completions of 48 tissue windows (8 from the lesion slice of each of the first 6
test phantoms) at dropout p = 0.5 and 0.1 and prints, for the hole: the per-pixel standard
deviation between samples, the share of that variation held by 8 x 8-pixel block means (low
frequencies), the share that is a uniform brightness shift, and the mean |residual| between
the real hole and a completion (all on the network's [-1, 1] scale).

Usage: ``.venv/bin/python scripts/completion_diversity.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

from models.heatmap import centred_mask  # noqa: E402
from models.picard import Picard  # noqa: E402
from train_default_bundle import TEST_SEEDS, lesion_volumes  # noqa: E402


def tissue_windows(n_exams: int = 6, per_exam: int = 8, seed: int = 0) -> np.ndarray:
    model_window = Picard.from_bundle(None).card["window"]
    rng = np.random.default_rng(seed)
    out = []
    for exam in lesion_volumes(range(TEST_SEEDS.start, TEST_SEEDS.start + n_exams)):
        z = int(np.flatnonzero(exam.lesion_mask.any(axis=(1, 2)))[0])
        img = np.clip(exam.volume[z], 0, 1)
        rows, cols = img.shape
        for _ in range(per_exam):
            for _try in range(50):
                y = rng.integers(0, rows - model_window)
                x = rng.integers(0, cols - model_window)
                if (img[y:y + model_window, x:x + model_window] > 0.05).mean() > 0.9:
                    break
            out.append(img[y:y + model_window, x:x + model_window])
    return np.stack(out)[:, None]


def main() -> int:
    torch.set_num_threads(1)
    model = Picard.from_bundle(None)
    card = model.card
    w, h = card["window"], card["hole"]
    x = torch.tensor(tissue_windows(), dtype=torch.float32) * 2 - 1
    mask = centred_mask(w, h)
    a, b = (w - h) // 2, (w + h) // 2
    for p in (0.5, 0.1):
        card["dropout"]["p"] = p
        torch.manual_seed(0)
        holes = model.complete(x, mask, m=10, dropout=True)[:, :, 0, a:b, a:b]  # N, M, h, h
        dev = holes - holes.mean(dim=1, keepdim=True)
        var = (dev ** 2).mean()
        low = F.avg_pool2d(dev.reshape(-1, 1, h, h), 8)
        shift = dev.mean(dim=(2, 3))
        resid = (x[:, None, 0, a:b, a:b] - holes).abs().mean()
        print(f"p={p}: between-sample std {var.sqrt().item():.3f}; share in 8x8 block means "
              f"{((low ** 2).mean() / var).item():.2f}; share as uniform shift "
              f"{((shift ** 2).mean() / var).item():.3f}; mean |residual| {resid.item():.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
