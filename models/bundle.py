"""Model bundles and official checkpoints: reading, writing and validating weights and cards.

Layout::

    bundle/
        generator.pt      # CompletionNetwork.state_dict()  (official gen_*.pt format)
        critics.pt        # {"localD": state_dict, "globalD": state_dict}  (dis_*.pt format)
        model_card.json   # settings and provenance, see :func:`validate_card`

Because both weight files use the official formats, the official checkpoints
(``gen_*.pt`` / ``dis_*.pt``) are read by the same code (:func:`read_official`,
:func:`networks_from_state_dicts`) and become a bundle with :func:`import_official`.
:class:`models.picard.Picard` builds on this module; this module never imports it.
Making new bundles (training, the small initial bundle) belongs to :mod:`models.lab`.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from models._files import atomic_torch_save, atomic_write_text
from models.networks import (OFFICIAL_COARSE_DROPOUT_LAYERS, CompletionNetwork, Critic,
                             count_parameters)

logger = logging.getLogger(__name__)

__all__ = ["CARD_FILE", "CRITICS_FILE", "GENERATOR_FILE", "METRICS", "architecture_entry",
           "default_bundle_path", "import_official", "networks_from_state_dicts",
           "official_card", "parse_metric", "read_bundle", "read_card", "read_official",
           "validate_card", "write_bundle"]

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

    Parameters
    ----------
    threshold : float, optional
        Segmentation threshold (unknown for the published weights).

    Returns
    -------
    dict
        A new card; its ``architecture`` entry is completed from the networks when a
        :class:`models.picard.Picard` is built or the bundle is imported.
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
    """Write the three bundle files, each atomically (the card is validated first).

    Parameters
    ----------
    bundle_dir : str or pathlib.Path
        Folder to write into (created if missing).
    generator_state : dict
        ``CompletionNetwork.state_dict()``.
    critics_state : dict
        ``{"localD": state_dict, "globalD": state_dict}`` (``globalD`` may be empty).
    card : dict
        Model card (:func:`validate_card`).

    Returns
    -------
    pathlib.Path
        The bundle folder.
    """
    card = validate_card(card)
    if set(critics_state) != {"localD", "globalD"}:
        raise ValueError(f"critics_state needs keys 'localD' and 'globalD', got {sorted(critics_state)}")
    out = Path(bundle_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(out / GENERATOR_FILE,
                      {k: v.detach().cpu() for k, v in generator_state.items()})
    atomic_torch_save(out / CRITICS_FILE, {name: {k: v.detach().cpu() for k, v in sd.items()}
                                           for name, sd in critics_state.items()})
    atomic_write_text(out / CARD_FILE, json.dumps(card, indent=2, sort_keys=True) + "\n")
    logger.info("wrote model bundle %s", out)
    return out


def read_card(bundle_dir: str | Path) -> dict[str, Any]:
    """Read and validate ``model_card.json`` of a bundle.

    Raises
    ------
    FileNotFoundError
        When the bundle has no card.
    ValueError
        When the card is not JSON or not a valid card (:func:`validate_card`).
    """
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
    """Read a bundle's weights and card (tensors on the CPU, loaded ``weights_only``).

    Parameters
    ----------
    bundle_dir : str or pathlib.Path
        Bundle folder (:func:`default_bundle_path` for the shipped one).

    Returns
    -------
    tuple
        ``(generator_state, critics_state, card)``.

    Raises
    ------
    FileNotFoundError
        When the folder or one of its three files is missing.
    """
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


# ------------------------------------------------------------------ official checkpoints


def read_official(gen_path: str | Path, dis_path: str | Path
                  ) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Read official checkpoints unchanged (``gen_*.pt`` and ``dis_*.pt``, ``weights_only``).

    Parameters
    ----------
    gen_path : str or pathlib.Path
        Generator ``state_dict`` file.
    dis_path : str or pathlib.Path
        ``{"localD": state_dict, "globalD": state_dict}`` file.

    Returns
    -------
    tuple
        ``(generator_state, critics_state)`` with tensors on the CPU.

    Raises
    ------
    FileNotFoundError
        When either file does not exist.
    """
    for path in (gen_path, dis_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
    gen = torch.load(gen_path, map_location="cpu", weights_only=True)
    dis = torch.load(dis_path, map_location="cpu", weights_only=True)
    logger.info("loaded official checkpoints %s, %s", gen_path, dis_path)
    return gen, dis


def networks_from_state_dicts(gen_state: dict[str, torch.Tensor],
                              dis_state: dict[str, dict[str, torch.Tensor]], *,
                              ngf: int | None = None
                              ) -> tuple[CompletionNetwork, Critic, Critic | None]:
    """Build the networks that official-format weights describe and load the weights.

    Widths, input channels and critic input sides are read from the weights; a
    ``module.`` prefix left by ``nn.DataParallel`` is dropped.

    Parameters
    ----------
    gen_state : dict
        Generator ``state_dict``.
    dis_state : dict
        ``{"localD": state_dict, "globalD": state_dict}``; ``globalD`` may be missing or empty.
    ngf : int, optional
        Expected generator width; an error if the weights disagree.

    Returns
    -------
    tuple
        ``(generator, local_critic, global_critic)``; ``global_critic`` is ``None`` without
        ``globalD`` weights.

    Raises
    ------
    ValueError
        When the weights are not PICARD/DeepFill-v1 weights or do not match ``ngf``.
    """
    gen_state = _strip_prefix(gen_state)
    found_ngf, channels = _infer_ngf(gen_state)
    if ngf is not None and ngf != found_ngf:
        raise ValueError(f"ngf={ngf} given but the generator weights have ngf={found_ngf}")
    if not isinstance(dis_state, dict) or "localD" not in dis_state:
        raise ValueError("critic checkpoint must be a dict with 'localD' (and 'globalD'), got "
                         f"keys {list(dis_state)[:4] if isinstance(dis_state, dict) else type(dis_state)}")
    generator = CompletionNetwork(found_ngf, in_channels=channels)
    generator.load_state_dict(gen_state, strict=True)
    local_state = _strip_prefix(dis_state["localD"])
    ndf, local_side = _infer_critic(local_state, "local")
    local = Critic(ndf, local_side, in_channels=channels)
    local.load_state_dict(local_state, strict=True)
    global_ = None
    if dis_state.get("globalD"):
        global_state = _strip_prefix(dis_state["globalD"])
        gndf, global_side = _infer_critic(global_state, "global")
        global_ = Critic(gndf, global_side, in_channels=channels)
        global_.load_state_dict(global_state, strict=True)
    return generator, local, global_


def architecture_entry(generator: CompletionNetwork, local_critic: Critic,
                       global_critic: Critic | None = None) -> dict[str, Any]:
    """The card's ``architecture`` values that follow from the networks.

    Returns
    -------
    dict
        ``ngf``, ``ndf``, ``local_critic_input``, ``global_critic_input`` (``None``
        without a global critic) and ``parameters`` (counts per network).
    """
    return {
        "ngf": generator.ngf, "ndf": local_critic.ndf,
        "local_critic_input": local_critic.input_size,
        "global_critic_input": global_critic.input_size if global_critic else None,
        "parameters": {"generator": count_parameters(generator),
                       "local_critic": count_parameters(local_critic),
                       "global_critic": count_parameters(global_critic) if global_critic else 0},
    }


def import_official(gen_path: str | Path, dis_path: str | Path, out_dir: str | Path, *,
                    threshold: float | None = None) -> Path:
    """Turn official ``gen_*.pt`` / ``dis_*.pt`` checkpoints into a bundle.

    Parameters
    ----------
    gen_path, dis_path : str or pathlib.Path
        Official checkpoints (:func:`read_official`).
    out_dir : str or pathlib.Path
        Bundle folder to write.
    threshold : float, optional
        The MCD value above which the binary segmentation marks a pixel; unknown for the
        published weights, so ``None`` unless given.

    Returns
    -------
    pathlib.Path
        ``out_dir``.

    Notes
    -----
    The card holds the official settings (:func:`official_card`) with the architecture
    read from the weights.
    """
    gen_state, dis_state = read_official(gen_path, dis_path)
    generator, local, global_ = networks_from_state_dicts(gen_state, dis_state)
    card = official_card(threshold=threshold)
    card["architecture"].update(architecture_entry(generator, local, global_))
    critics = {"localD": local.state_dict(),
               "globalD": global_.state_dict() if global_ is not None else {}}
    write_bundle(out_dir, generator.state_dict(), critics, card)
    return Path(out_dir)


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` prefix left by ``nn.DataParallel``."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _infer_ngf(gen_state: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(ngf, input channels) of a generator state_dict."""
    key = "coarse_generator.conv1.conv.weight"
    if key not in gen_state:
        raise ValueError(f"generator state_dict lacks {key!r}: not a PICARD/DeepFill-v1 generator "
                         f"(first keys: {list(gen_state)[:3]})")
    w = gen_state[key]
    return int(w.shape[0]), int(w.shape[1]) - 2


def _infer_critic(state: dict[str, torch.Tensor], which: str) -> tuple[int, int]:
    """(ndf, input side) of a critic state_dict."""
    try:
        ndf = int(state["dis_conv_module.conv1.conv.weight"].shape[0])
        features = int(state["linear.weight"].shape[1])
    except KeyError as exc:
        raise ValueError(f"{which} critic state_dict lacks {exc.args[0]!r}") from exc
    side = math.isqrt(features // (4 * ndf))
    if 4 * ndf * side * side != features:
        raise ValueError(f"{which} critic linear layer has {features} inputs, not 4*ndf*s^2")
    return ndf, 16 * side
