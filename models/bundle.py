"""Model bundles: a folder with the weights in the official formats and a model card.

Layout::

    bundle/
        generator.pt      # CompletionNetwork.state_dict()  (official gen_*.pt format)
        critics.pt        # {"localD": state_dict, "globalD": state_dict}  (dis_*.pt format)
        model_card.json   # settings and provenance, see :func:`validate_card`

Because both weight files use the official formats, ``Picard.from_official`` reads them
as well, and official checkpoints become a bundle with :func:`import_official`.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from models.networks import OFFICIAL_COARSE_DROPOUT_LAYERS

logger = logging.getLogger(__name__)

__all__ = ["CARD_FILE", "CRITICS_FILE", "GENERATOR_FILE", "METRICS", "default_bundle_path",
           "import_official", "make_initial_bundle", "official_card", "parse_metric",
           "read_bundle", "validate_card", "write_bundle"]

GENERATOR_FILE = "generator.pt"
CRITICS_FILE = "critics.pt"
CARD_FILE = "model_card.json"
CARD_FORMAT = 1

#: metric name (official spelling) -> (feature space, reduction over the M completions)
METRICS: dict[str, tuple[str, str]] = {
    "MCD_image": ("image", "min"),
    "MCD_feature": ("feature", "min"),
    "MeanCD_image": ("image", "mean"),
    "MeanCD_feature": ("feature", "mean"),
    "MedCD_image": ("image", "median"),
    "MedCD_feature": ("feature", "median"),
}

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": int,
    "name": str,
    "version": str,
    "architecture": dict,
    "window": int,
    "hole": int,
    "stride": int,
    "pixel_spacing_mm": (int, float),
    "intensity": dict,
    "dropout": dict,
    "M": int,
    "metric": str,
    "threshold": (int, float, type(None)),
    "tissue_level": (int, float),
    "min_tissue_fraction": (int, float),
    "batch_size": int,
    "training": str,
    "metrics": dict,
}


def parse_metric(name: str) -> tuple[str, str]:
    """``"MCD_feature"`` -> ``("feature", "min")``; ``ValueError`` for unknown names."""
    if name not in METRICS:
        raise ValueError(f"metric must be one of {sorted(METRICS)}, got {name!r}")
    return METRICS[name]


def default_bundle_path() -> Path:
    """Folder of the bundle shipped with the package (``models/bundles/default``)."""
    return Path(__file__).resolve().parent / "bundles" / "default"


def official_card(*, threshold: float | None = None) -> dict[str, Any]:
    """Model card with the official PICARD inference settings (``configs/default.yaml``).

    ``pixel_spacing_mm`` is 0.1: the official model was trained and applied on
    full-resolution Duke BCS-DBT slices (about 2000 x 2500 pixels, Hologic
    reconstructions with an in-plane pixel of about 0.1 mm) without resampling, so
    other data are resampled to 0.1 mm before scoring.
    """
    return {
        "format": CARD_FORMAT,
        "name": "PICARD",
        "version": "official",
        "architecture": {"name": "DeepFill-v1 completion network + WGAN critics (PICARD)",
                         "ngf": 32, "ndf": 32, "parameters": {},
                         "local_critic_input": 128, "global_critic_input": 256},
        "window": 256,
        "hole": 128,
        "stride": 32,
        "pixel_spacing_mm": 0.1,
        "pixel_spacing_note": ("official weights: full-resolution Duke BCS-DBT slices "
                               "(~2000x2500 px, ~0.1 mm Hologic reconstruction pixel), "
                               "used without resampling"),
        "intensity": {"mode": "fixed",
                      "description": "slice in [0, 1] (stored value / maximum); each window "
                                     "mapped to [-1, 1] by 2x - 1, as the official code"},
        "dropout": {"layers": list(OFFICIAL_COARSE_DROPOUT_LAYERS), "p": 0.5},
        "M": 10,
        "metric": "MCD_image",
        "threshold": threshold,
        "tissue_level": 0.02,
        "min_tissue_fraction": 0.5,
        "batch_size": 8,
        "training": "official PICARD weights (Konz et al. 2023), normal Duke BCS-DBT slices",
        "metrics": {},
    }


def validate_card(card: dict[str, Any]) -> dict[str, Any]:
    """Check a model card and return a deep copy.

    Raises
    ------
    ValueError
        On a missing key, a wrong type or an inconsistent value (named in the message).
    """
    if not isinstance(card, dict):
        raise ValueError(f"model card must be a dict, got {type(card).__name__}")
    for key, kind in _REQUIRED.items():
        if key not in card:
            raise ValueError(f"model card lacks {key!r}")
        if not isinstance(card[key], kind) or isinstance(card[key], bool):
            raise ValueError(f"model card {key!r} has type {type(card[key]).__name__}, "
                             f"expected {kind}")
    if card["format"] != CARD_FORMAT:
        raise ValueError(f"model card format {card['format']!r} is not {CARD_FORMAT}")
    for key in ("ngf", "ndf"):
        if not isinstance(card["architecture"].get(key), int):
            raise ValueError(f"model card architecture lacks integer {key!r}")
    if card["window"] % 8 or not 0 < card["hole"] < card["window"]:
        raise ValueError(f"model card needs window % 8 == 0 and 0 < hole < window, got "
                         f"window={card['window']}, hole={card['hole']}")
    if card["stride"] <= 0 or card["M"] <= 0 or card["batch_size"] <= 0:
        raise ValueError("model card stride, M and batch_size must be positive")
    if card["pixel_spacing_mm"] <= 0:
        raise ValueError(f"model card pixel_spacing_mm must be > 0, got {card['pixel_spacing_mm']}")
    parse_metric(card["metric"])
    drop = card["dropout"]
    if not isinstance(drop.get("layers"), list) or not isinstance(drop.get("p"), (int, float)):
        raise ValueError("model card dropout must be {'layers': [names], 'p': float}")
    if not 0.0 <= drop["p"] < 1.0:
        raise ValueError(f"model card dropout p must be in [0, 1), got {drop['p']}")
    if "mode" not in card["intensity"]:
        raise ValueError("model card intensity lacks 'mode'")
    return copy.deepcopy(card)


def write_bundle(bundle_dir: str | Path, generator_state: dict[str, torch.Tensor],
                 critics_state: dict[str, dict[str, torch.Tensor]], card: dict[str, Any]) -> Path:
    """Write the three bundle files (card validated first); returns the folder."""
    card = validate_card(card)
    if set(critics_state) != {"localD", "globalD"}:
        raise ValueError(f"critics_state needs keys 'localD' and 'globalD', got {sorted(critics_state)}")
    out = Path(bundle_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in generator_state.items()}, out / GENERATOR_FILE)
    torch.save({name: {k: v.detach().cpu() for k, v in sd.items()}
                for name, sd in critics_state.items()}, out / CRITICS_FILE)
    (out / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    logger.info("wrote model bundle %s", out)
    return out


def read_card(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``model_card.json`` of a bundle."""
    path = Path(bundle_dir) / CARD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model bundle {bundle_dir} has no {CARD_FILE}")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    return validate_card(card)


def read_bundle(bundle_dir: str | Path) -> tuple[dict[str, torch.Tensor],
                                                 dict[str, dict[str, torch.Tensor]],
                                                 dict[str, Any]]:
    """Read ``(generator_state, critics_state, card)`` (tensors on CPU, ``weights_only``)."""
    folder = Path(bundle_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model bundle folder {folder} does not exist")
    card = read_card(folder)
    for name in (GENERATOR_FILE, CRITICS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"model bundle {folder} has no {name}")
    gen = torch.load(folder / GENERATOR_FILE, map_location="cpu", weights_only=True)
    dis = torch.load(folder / CRITICS_FILE, map_location="cpu", weights_only=True)
    return gen, dis, card


def import_official(gen_path: str | Path, dis_path: str | Path, out_dir: str | Path, *,
                    threshold: float | None = None) -> Path:
    """Turn official ``gen_*.pt`` / ``dis_*.pt`` checkpoints into a bundle.

    The card holds the official settings (:func:`official_card`); ``threshold`` (the MCD
    value above which the binary segmentation marks a pixel) is unknown for the
    published weights and stays ``None`` unless given.
    """
    from models.picard import Picard

    model = Picard.from_official(gen_path, dis_path, card=official_card(threshold=threshold))
    model.save_bundle(out_dir, model.card)
    return Path(out_dir)


def make_initial_bundle(out_dir: str | Path | None = None, *, seed: int = 0) -> Path:
    """Write a small, untrained bundle so the pipeline runs end to end.

    ngf = ndf = 8, window 64, hole 32, stride 16, 0.4 mm pixels, M 4, He-normal random
    weights from ``seed``. The threshold is the 99.5th percentile of its heatmap on a synthetic
    tissue-like image (:func:`_tissue_image`).
    """
    import numpy as np

    from models.networks import CompletionNetwork, Critic, he_normal_
    from models.picard import Picard

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
    image = _tissue_image(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        nets = [he_normal_(n) for n in (CompletionNetwork(ngf=8), Critic(8, 32), Critic(8, 64))]
        model = Picard(*nets, card=card)
        heat = model.heatmap(image)
    tissue = image > card["tissue_level"]
    model.card["threshold"] = float(np.percentile(heat[tissue], 99.5))
    model.card["threshold_note"] = ("99.5th percentile of the heatmap over tissue of a "
                                    f"synthetic 256x192 texture image (seed {seed}); "
                                    "not calibrated on data")
    model.save_bundle(out, model.card)
    return out


def _tissue_image(seed: int, shape: tuple[int, int] = (256, 192)):
    """Synthetic breast-like slice: smoothed noise texture inside a half ellipse, air outside."""
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    h, w = shape
    tex = sum(ndimage.gaussian_filter(rng.standard_normal(shape), s) * s for s in (2, 6, 14))
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-9)
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((yy - h / 2) / (0.48 * h)) ** 2 + (xx / (0.95 * w)) ** 2 <= 1.0
    return np.where(inside, 0.3 + 0.5 * tex, 0.0).astype(np.float32)
