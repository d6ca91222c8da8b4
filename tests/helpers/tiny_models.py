"""A tiny randomly initialised PICARD (4-channel networks, 32 px window) for model unit tests."""

from __future__ import annotations

from pathlib import Path

import torch

from models import Picard
from models.bundle import official_card
from models.networks import CompletionNetwork, Critic, he_normal_


def tiny_card(*, stride: int, **changes) -> dict:
    """Official card shrunk to a 32 px window / 16 px hole with the given ``stride``.

    Parameters
    ----------
    stride : int
        Sliding-window stride, px.
    **changes
        Further card entries, applied last.
    """
    card = official_card(threshold=1.0)
    card.update(window=32, hole=16, stride=stride, pixel_spacing_mm=0.4, M=3, batch_size=4,
                training="test", min_tissue_fraction=0.5)
    card.update(changes)
    return card


def tiny_picard(card: dict, seed: int = 0) -> Picard:
    """He-normal initialised 4-channel completion network and critics, seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    nets = [he_normal_(n, generator=g) for n in (CompletionNetwork(4), Critic(4, 16), Critic(4, 32))]
    return Picard(*nets, card=card)


def bundle_with_threshold(out: Path, threshold: float, tag: str) -> Path:
    """A copy of the shipped bundle at ``out`` with another SEG threshold; its card version
    gets ``-<tag>-threshold-<t>`` so every result object says which threshold it used."""
    import json
    import shutil

    from models.bundle import default_bundle_path

    shutil.copytree(default_bundle_path(), out)
    card_path = Path(out) / "model_card.json"
    card = json.loads(card_path.read_text())
    card["threshold"] = float(threshold)
    card["version"] = f"{card['version']}-{tag}-threshold-{threshold:g}"
    card_path.write_text(json.dumps(card, indent=1))
    return Path(out)
