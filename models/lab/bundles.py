"""Making model bundles that need the lab: the small, untrained initial bundle.

Bundles from training are written by :func:`write_bundle_from_checkpoint` (with the card of
:func:`card_for`); bundles from the official checkpoints by
:func:`models.bundle.import_official`. This module also makes a bundle with random weights whose threshold is calibrated on a synthetic phantom
slice (:func:`models.lab.phantom.make_phantom`), so the pipeline can run end to end in tests
without trained weights.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from models.bundle import default_bundle_path, official_card
from models.lab.phantom import make_phantom
from models.networks import CompletionNetwork, Critic, he_normal_
from models.picard import Picard

if TYPE_CHECKING:
    from models.lab.train import TrainConfig

logger = logging.getLogger(__name__)

__all__ = ["INITIAL_IMAGE_SHAPE", "card_for", "make_initial_bundle",
           "write_bundle_from_checkpoint"]

#: rows, columns of the phantom slice the initial threshold is calibrated on
INITIAL_IMAGE_SHAPE: tuple[int, int] = (256, 192)


def make_initial_bundle(out_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """Write a small, untrained bundle so the pipeline runs end to end.

    ngf = ndf = 8, window 64, hole 32, stride 16, 0.4 mm pixels, M 4, He-normal random
    weights from ``seed``. The threshold is the 99.5th percentile of its heatmap over the
    tissue of one lesion-free synthetic phantom slice (:func:`models.lab.phantom.make_phantom`,
    :data:`INITIAL_IMAGE_SHAPE` at 0.4 mm, seed ``seed``); it is not calibrated on data.

    Parameters
    ----------
    out_dir : str or pathlib.Path, optional
        Bundle folder; default :func:`models.bundle.default_bundle_path` (which it replaces).
    seed : int, default 0
        Seeds the weights and the phantom.

    Returns
    -------
    pathlib.Path
        The bundle folder.
    """
    out = Path(out_dir) if out_dir is not None else default_bundle_path()
    card = official_card()
    card.pop("pixel_spacing_note")
    card.update(
        version="0.0-initial",
        window=64, hole=32, stride=16, pixel_spacing_mm=0.4, M=4, batch_size=16,
        training=f"untrained initial weights (seed {seed})",
        metrics={},
    )
    card["architecture"].update(ngf=8, ndf=8, local_critic_input=32, global_critic_input=64)
    rows, cols = INITIAL_IMAGE_SHAPE
    image = make_phantom(seed=seed, lesions=0, slices=1, rows=rows, cols=cols,
                         pixel_spacing_mm=card["pixel_spacing_mm"]).volume[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = [he_normal_(n) for n in (CompletionNetwork(ngf=8), Critic(8, 32), Critic(8, 64))]
        model = Picard(*nets, card=card)
        heat = model.heatmap(image)
    tissue = image > card["tissue_level"]
    model.card["threshold"] = float(np.percentile(heat[tissue], 99.5))
    model.card["threshold_note"] = ("99.5th percentile of the heatmap over tissue of a "
                                    f"synthetic {rows}x{cols} phantom slice "
                                    f"(models.lab.phantom, seed {seed}); not calibrated on data")
    model.save_bundle(out, model.card)
    logger.info("initial bundle %s, threshold %.4g", out, model.card["threshold"])
    return out


def card_for(cfg: TrainConfig, *, threshold: float | None = None,
             extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model card for a model trained with ``cfg``.

    Parameters
    ----------
    cfg : TrainConfig
        The training settings (window, hole, stride, spacing, M, metric, tissue levels);
        stored in full under ``train_config``.
    threshold : float, optional
        Segmentation threshold (``None`` until calibrated).
    extra : dict, optional
        Entries that replace or add to the card's.

    Returns
    -------
    dict
        The card (official settings otherwise, :func:`models.bundle.official_card`).
    """
    card = official_card(threshold=threshold)
    card.pop("pixel_spacing_note", None)
    card.update(
        version="trained",
        window=cfg.window, hole=cfg.hole, stride=cfg.stride,
        pixel_spacing_mm=float(cfg.pixel_spacing_mm), M=cfg.m, metric=cfg.metric,
        tissue_level=cfg.tissue_level, min_tissue_fraction=cfg.min_tissue_fraction,
        batch_size=max(1, 128 // cfg.m),
        training="trained with models.train on normal arrays",
        train_config=dataclasses.asdict(cfg),
        metrics={},
    )
    if extra:
        card.update(extra)
    return card


def write_bundle_from_checkpoint(best_path: Path, cfg: TrainConfig, bundle_dir: Path, *,
                                 threshold: float | None = None,
                                 card_extra: dict[str, Any] | None = None) -> Path:
    """Write a bundle from a ``best.pt`` file of :func:`train`.

    Parameters
    ----------
    best_path : pathlib.Path
        ``best.pt`` written by :func:`train`.
    cfg : TrainConfig
        The settings it was trained with (network widths, card values).
    bundle_dir : pathlib.Path
        Bundle folder to write.
    threshold : float, optional
        Segmentation threshold for the card.
    card_extra : dict, optional
        Extra card entries (:func:`card_for`).

    Returns
    -------
    pathlib.Path
        ``bundle_dir``.
    """
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    gen = CompletionNetwork(ngf=cfg.ngf)
    gen.load_state_dict(best["gen"])
    local, glob = Critic(cfg.ndf, cfg.hole), Critic(cfg.ndf, cfg.window)
    local.load_state_dict(best["localD"])
    glob.load_state_dict(best["globalD"])
    extra = {"training_iteration": int(best["iteration"]), "validation_l1": float(best["val_l1"]),
             **(card_extra or {})}
    card = card_for(cfg, threshold=threshold, extra=extra)
    model = Picard(gen, local, glob, card=card)
    model.save_bundle(bundle_dir, model.card)
    logger.info("bundle %s from iteration %d (val L1 %.4f)", bundle_dir, best["iteration"],
                best["val_l1"])
    return Path(bundle_dir)
