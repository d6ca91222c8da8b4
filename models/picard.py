"""PICARD inference: pluralistic completion, minimum completion distance, heatmaps.

PICARD (Konz et al., Med. Image Anal. 87:102836, 2023, arXiv:2305.03098) localises
anomalies with a completion network trained on normal tissue only: the centre of each
window is masked and completed M times with channel dropout left on, and the window is
scored by the minimum completion distance (MCD) between the real centre and its
completions, in image space (L2 over the hole pixels) or in the feature space of the
local critic. :class:`Picard` wraps the networks of :mod:`models.networks` with the
settings of a model card; reading and writing weights and cards is :mod:`models.bundle`'s
job (this module imports it, never the reverse).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from models import bundle as _bundle
from models import explain as _explain
from models import fast as _fast
from models import heatmap as _hm
from models import settings as _settings
from models import stream as _stream
from models.device import resolve_device
from models.explain import ExpectedCompletion, VolumeScores
from models.fast import INFERENCE_KEYS, InferenceConfig, InferenceStats
from models.networks import CompletionNetwork, Critic
from models.settings import HEATMAP_OVERRIDES, REDUCTIONS, SPACES

logger = logging.getLogger(__name__)

__all__ = ["HEATMAP_OVERRIDES", "INFERENCE_KEYS", "ExpectedCompletion", "Picard", "VolumeScores",
           "resolve_device"]

class Picard:
    """A PICARD model: completion network, critics and the model card.

    Parameters
    ----------
    generator : CompletionNetwork
        The completion network.
    local_critic : Critic
        Local critic (its convolution features define ``MCD_feature``).
    global_critic : Critic, optional
        Global critic (unused at inference, kept so bundles round-trip).
    card : dict, optional
        Model card (:func:`models.bundle.validate_card`); default: the official
        settings. Its ``architecture`` entry is filled in from the networks.
    device : str
        ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.

    Notes
    -----
    The networks are moved to ``device``, put in evaluation mode and frozen
    (``requires_grad_(False)``); pass copies if they are still being trained.
    """

    def __init__(self, generator: CompletionNetwork, local_critic: Critic,
                 global_critic: Critic | None = None, *, card: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = resolve_device(device)
        card = dict(card) if card is not None else _bundle.official_card()
        card["architecture"] = dict(card.get("architecture", {}))
        card["architecture"].update(
            _bundle.architecture_entry(generator, local_critic, global_critic))
        self.card: dict[str, Any] = _bundle.validate_card(card)
        generator.set_dropout(self.card["dropout"]["layers"], self.card["dropout"]["p"])
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.local_critic = local_critic.to(self.device).eval().requires_grad_(False)
        self.global_critic = (global_critic.to(self.device).eval().requires_grad_(False)
                              if global_critic is not None else None)
        #: work counters of the last :meth:`heatmap` / :meth:`score_volume` call
        self.last_stats: InferenceStats | None = None
        self._compiled: Callable[..., torch.Tensor] | None = None
        InferenceConfig.from_card(self.card)  # fail early on a bad "inference" entry

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_state_dicts(cls, gen_state: dict[str, torch.Tensor],
                         dis_state: dict[str, dict[str, torch.Tensor]],
                         device: str | torch.device = "cpu", *, ngf: int | None = None,
                         card: dict[str, Any] | None = None) -> Picard:
        """Build from an official-format generator state_dict and ``{"localD", "globalD"}``
        (:func:`models.bundle.networks_from_state_dicts`)."""
        nets = _bundle.networks_from_state_dicts(gen_state, dis_state, ngf=ngf)
        return cls(*nets, card=card, device=device)

    @classmethod
    def from_official(cls, gen_path: str | Path, dis_path: str | Path,
                      device: str | torch.device = "cpu", *, ngf: int | None = None,
                      card: dict[str, Any] | None = None) -> Picard:
        """Load official checkpoints unchanged (``gen_*.pt`` and ``dis_*.pt``).

        Parameters
        ----------
        gen_path : path
            Generator ``state_dict`` file.
        dis_path : path
            ``{"localD": state_dict, "globalD": state_dict}`` file.
        device : str
            ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        ngf : int, optional
            Expected width; inferred from the weights (an error if they disagree).
        card : dict, optional
            Model card; default :func:`models.bundle.official_card`.
        """
        resolve_device(device)
        gen, dis = _bundle.read_official(gen_path, dis_path)
        return cls.from_state_dicts(gen, dis, device, ngf=ngf, card=card)

    @classmethod
    def from_bundle(cls, bundle_dir: str | Path | None = None,
                    device: str | torch.device = "cpu") -> Picard:
        """Load a model bundle (default: :func:`models.bundle.default_bundle_path`)."""
        folder = Path(bundle_dir) if bundle_dir is not None else _bundle.default_bundle_path()
        gen, dis, card = _bundle.read_bundle(folder)
        arch = card["architecture"]
        model = cls.from_state_dicts(gen, dis, device, ngf=arch["ngf"], card=card)
        if model.card["architecture"]["ndf"] != arch["ndf"]:
            raise ValueError(f"bundle {folder}: card ndf={arch['ndf']} but weights have "
                             f"ndf={model.card['architecture']['ndf']}")
        return model

    def save_bundle(self, bundle_dir: str | Path, card: dict[str, Any] | None = None) -> Path:
        """Write generator.pt, critics.pt (official formats) and model_card.json.

        ``card`` replaces the model's card (its architecture entry is recomputed).
        """
        if card is not None:
            rebuilt = Picard(self.generator, self.local_critic, self.global_critic,
                             card=card, device=self.device)
            self.card = rebuilt.card
        critics = {"localD": self.local_critic.state_dict(),
                   "globalD": (self.global_critic.state_dict() if self.global_critic is not None
                               else {})}
        return _bundle.write_bundle(bundle_dir, self.generator.state_dict(), critics, self.card)

    # ------------------------------------------------------------------ properties
    @property
    def threshold(self) -> float:
        """MCD value above which the binary segmentation marks a pixel."""
        value = self.card["threshold"]
        if value is None:
            raise ValueError("model card has no threshold; calibrate one and set card['threshold']")
        return float(value)

    # ------------------------------------------------------------------ completion
    def _check_inputs(self, windows: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(windows, torch.Tensor) or windows.ndim != 4 \
                or windows.shape[1] != self.generator.in_channels:
            raise ValueError(f"windows must be a (N, {self.generator.in_channels}, H, W) tensor, "
                             f"got {getattr(windows, 'shape', type(windows))}")
        if not isinstance(mask, torch.Tensor) or mask.ndim != 4 or mask.shape[1] != 1 \
                or mask.shape[2:] != windows.shape[2:] or mask.shape[0] not in (1, windows.shape[0]):
            raise ValueError(f"mask must be (N or 1, 1, H, W) matching windows {tuple(windows.shape)}, "
                             f"got {getattr(mask, 'shape', type(mask))}")
        return (windows.to(self.device, torch.float32), mask.to(self.device, torch.float32))

    def complete(self, windows: torch.Tensor, mask: torch.Tensor, m: int = 10,
                 dropout: bool = True, *, p: float | None = None,
                 layers: Sequence[str] | None = None,
                 max_batch: int | None = None) -> torch.Tensor:
        """Draw ``m`` completions of the masked region of each window.

        Parameters
        ----------
        windows : torch.Tensor
            (N, 1, H, W) in [-1, 1]; H and W multiples of 8.
        mask : torch.Tensor
            (N or 1, 1, H, W), 1 inside the hole.
        m : int
            Completions per window.
        dropout : bool
            Keep dropout on in the card's layers (pluralistic); off = deterministic.
        p, layers : optional
            Override the card's dropout probability / layer list.
        max_batch : int, optional
            Completions per forward pass (default ``card["batch_size"] * m``).

        Returns
        -------
        torch.Tensor
            (N, m, 1, H, W): ``windows * (1 - mask) + output * mask``.
        """
        x, mask = self._check_inputs(windows, mask)
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m!r}")
        n = x.shape[0]
        drop = self.card["dropout"]
        self.generator.set_dropout((drop["layers"] if layers is None else layers) if dropout else None,
                                   drop["p"] if p is None else p)
        step = max_batch or self.card["batch_size"] * m
        with torch.inference_mode():
            xin = x * (1.0 - mask)
            xr = xin.repeat_interleave(m, dim=0)
            mr = mask.repeat_interleave(m, dim=0) if mask.shape[0] > 1 else mask
            out = torch.empty_like(xr)
            for s in range(0, n * m, step):
                mk = mr[s:s + step] if mr.shape[0] > 1 else mr
                _, refined = self.generator(xr[s:s + step], mk)
                out[s:s + step] = refined * mk + xr[s:s + step] * (1.0 - mk)
        return out.view(n, m, *x.shape[1:])

    def critic_features(self, crops: torch.Tensor) -> torch.Tensor:
        """Local-critic features (N, D) of hole crops (N, 1, h, w), resized (nearest) to the
        critic's input side as the official code does."""
        side = self.local_critic.input_size
        with torch.inference_mode():
            if crops.shape[-2:] != (side, side):
                crops = F.interpolate(crops, size=(side, side), mode="nearest")
            return self.local_critic.features(crops).flatten(1)

    def mcd(self, windows: torch.Tensor, mask: torch.Tensor, m: int = 10, dropout: bool = True,
            space: str = "image", reduce: str = "min", *, p: float | None = None,
            layers: Sequence[str] | None = None) -> torch.Tensor:
        """Completion distance of each window (official ``MCD``/``MeanCD``/``MedCD``).

        Parameters
        ----------
        windows, mask, m, dropout, p, layers
            As :meth:`complete`.
        space : {"image", "feature"}
            ``image``: L2 norm over the hole pixels; ``feature``: L2 between local-critic
            features of the hole's bounding-box crop (all masks must share it).
        reduce : {"min", "mean", "median"}
            Reduction over the ``m`` completions (``median`` is the lower median).

        Returns
        -------
        torch.Tensor
            (N,) float32 scores on the model's device.
        """
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
        x, mask = self._check_inputs(windows, mask)
        comps = self.complete(x, mask, m, dropout, p=p, layers=layers)  # (N, M, 1, H, W)
        with torch.inference_mode():
            return _settings.reduce_distances(self._distances(x, mask, comps, space), reduce)

    def _distances(self, x: torch.Tensor, mask: torch.Tensor, comps: torch.Tensor,
                   space: str) -> torch.Tensor:
        """(N, M) distances between the windows ``x`` and their completions ``comps``."""
        m = comps.shape[1]
        if space == "image":
            diff = (comps - x.unsqueeze(1)) * mask.unsqueeze(1)
            return diff.flatten(2).norm(dim=2)
        (y0, y1), (x0, x1) = _hm.hole_box(mask)
        n = x.shape[0]
        real = self.critic_features(x[:, :, y0:y1, x0:x1])  # (N, D)
        fake = self.critic_features(comps.flatten(0, 1)[:, :, y0:y1, x0:x1])
        return (fake.view(n, m, -1) - real.unsqueeze(1)).norm(dim=2)

    def sample_distances(self, windows: torch.Tensor, mask: torch.Tensor, m: int, *,
                         dropout: bool = True, space: str = "image", p: float | None = None,
                         share_conv1: bool = True, compiled: bool = False) -> torch.Tensor:
        """(N, m) distances of ``m`` fresh completions per window (fast-mode primitive).

        With ``share_conv1`` the coarse ``conv1`` runs once per window
        (:func:`models.fast.complete_shared`); the completions equal :meth:`complete`'s.
        Runs under the caller's autocast / inference mode.
        """
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        x, mask = self._check_inputs(windows, mask)
        drop = self.card["dropout"]
        if not share_conv1:
            comps = self.complete(x, mask, m, dropout, p=p)
        else:
            self.generator.set_dropout(drop["layers"] if dropout else None,
                                       drop["p"] if p is None else p)
            forward = self._compiled_forward() if compiled else None
            with torch.inference_mode():
                comps = _fast.complete_shared(self.generator, x, mask, m,
                                              windows_per_pass=self.card["batch_size"],
                                              forward=forward)
        with torch.inference_mode():
            return self._distances(x, mask, comps.to(x.dtype), space).float()

    def _compiled_forward(self) -> Callable[..., torch.Tensor]:
        if self._compiled is None:
            self._compiled = torch.compile(_fast._shared_forward, dynamic=True)
        return self._compiled

    # ------------------------------------------------------------------ heatmaps
    def inference_config(self, mode: str | None = None, **switches: Any) -> InferenceConfig:
        """The card's ``"inference"`` entry (default mode ``exact``) with ``mode`` and
        ``switches`` (:data:`models.fast.INFERENCE_KEYS`) applied."""
        return InferenceConfig.from_card(self.card, mode=mode, **switches)

    def scoring_description(self, mode: str | None = None) -> dict[str, Any]:
        """What :meth:`score_volume` computes with these settings, for labels and records.

        Returns
        -------
        dict
            ``rule`` (``min``/``mean``/``median`` over the M samples), ``rule_name``
            (e.g. "mean completion distance"), ``space`` (``image``/``feature``), ``M``,
            ``p`` (dropout probability), ``mode`` (``exact``/``fast``), ``slice_step``
            (1 in exact mode), ``window_px``, ``hole_px``, ``stride_px`` and
            ``pixel_spacing_mm`` (the model's grid).
        """
        return _settings.scoring_description(self.card, self.inference_config(mode))

    def _settings(self, overrides: dict[str, Any]) -> tuple[_hm.HeatmapConfig, dict[str, Any]]:
        return _settings.scoring_settings(self.card, overrides)

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        """Fix the dropout draws (CPU and this model's CUDA device) inside the block."""
        if seed is None:
            yield
            return
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def heatmap(self, image: np.ndarray, *, mode: str | None = None,
                progress: Callable[[int, int], None] | None = None,
                **overrides: Any) -> np.ndarray:
        """Sliding-window MCD heatmap of one slice.

        Parameters
        ----------
        image : np.ndarray
            (H, W) in [0, 1], already at ``card["pixel_spacing_mm"]``.
        mode : {"fast", "exact"}, optional
            Default: the card's ``inference.mode``, else ``exact`` (see :mod:`models.fast`).
            ``exact`` is the paper's procedure.
        progress : callable, optional
            ``progress(done_windows, total_windows)`` after each batch (exact) or pass (fast).
        **overrides
            Any of :data:`HEATMAP_OVERRIDES` (``M``, ``p``, ``metric``, ``stride``, ...)
            or of :data:`models.fast.INFERENCE_KEYS` (fast-mode switches);
            ``seed`` (default 0, ``None`` = unseeded) fixes the dropout draws;
            ``mask_background`` (default True) sets air pixels (``<= tissue_level``) to 0.

        Returns
        -------
        np.ndarray
            (H, W) float32 scores. Work counters in :attr:`last_stats`.
        """
        switches = {k: overrides.pop(k) for k in list(overrides) if k in INFERENCE_KEYS}
        icfg = self.inference_config(mode, **switches)
        stats = InferenceStats(mode=icfg.mode, slices_total=1, slices_scored=1,
                               config=icfg.as_dict())
        t0 = time.perf_counter()
        try:
            return self._heatmap(image, icfg, stats, progress, overrides)[0]
        finally:
            stats.seconds = time.perf_counter() - t0
            self.last_stats = stats

    def _heatmap(self, image: np.ndarray, icfg: InferenceConfig, stats: InferenceStats,
                 progress: Callable[[int, int], None] | None, overrides: dict[str, Any], *,
                 spread: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """(heatmap, completion spread or None) of one slice; spread only in exact mode."""
        overrides = dict(overrides)
        mask_background = bool(overrides.pop("mask_background", True))
        config, s = self._settings(overrides)
        image = np.asarray(image)
        if image.ndim != 2:
            raise ValueError(f"image must be 2D (H, W), got shape {image.shape}")
        if config.intensity == "fixed" and image.size and (image.min() < -1e-6 or image.max() > 1 + 1e-6):
            raise ValueError(f"image values must lie in [0, 1], got [{image.min()}, {image.max()}]")
        spread = spread and icfg.mode == "exact"
        timer = _fast.Timer(self.device)

        def mapper(raw: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            # the score (as :meth:`mcd`) and the spread come from the same completions
            with timer():
                x, mask = self._check_inputs(_hm.normalize_windows(raw, config.intensity), mask)
                comps = self.complete(x, mask, s["m"], s["dropout"], p=s["p"])
                with torch.inference_mode():
                    dist = self._distances(x, mask, comps, s["space"])
                    cols = [_settings.reduce_distances(dist, s["reduce"])]
                    if spread:
                        scale = _hm.intensity_scale(raw, config.intensity).to(self.device)
                        cols.append(_explain.completion_spread(comps, mask, scale))
            stats.windows_computed += int(raw.shape[0])
            stats.completions += int(raw.shape[0]) * s["m"]
            return torch.stack(cols, dim=1)

        def sample_distances(windows: torch.Tensor, mask: torch.Tensor, k: int) -> torch.Tensor:
            with timer():
                return self.sample_distances(windows, mask, k, dropout=s["dropout"],
                                             space=s["space"], p=s["p"],
                                             share_conv1=icfg.share_conv1,
                                             compiled=icfg.compile)

        counts: dict[str, int] = {}
        try:
            with self._seeded(s["seed"]):
                if icfg.mode == "exact":
                    maps = list(_hm.sliding_window_maps(image, mapper, config, channels=1 + spread,
                                                        device=self.device, progress=progress,
                                                        stats=counts))
                else:
                    with _fast.runtime(self.generator, self.device, icfg):
                        sw = _hm.prepare_slice(image, config, device=self.device)
                        grid = _fast.fast_slice_grid(sw, sample_distances, config, icfg,
                                                     m=s["m"], reduce=s["reduce"], stats=stats,
                                                     device=self.device, progress=progress)
                    maps = [_hm.grid_heatmap(grid, sw, config)]
        finally:
            stats.windows_total += counts.get("windows_total", 0)
            stats.windows_tissue += counts.get("windows_tissue", 0)
            stats.generator_seconds += timer.seconds
        # Bicubic upsampling spreads the scores of windows at the skin line into the air
        # around the breast; air is not tissue that can be abnormal, so it scores 0 unless
        # ``mask_background=False`` is passed.
        if mask_background:
            for m in maps:
                m[image <= config.tissue_level] = 0.0
        return maps[0], (maps[1] if spread else None)

    def score_volume(self, volume: np.ndarray, *,
                     pixel_spacing_mm: float | tuple[float, float],
                     progress: Callable[[int, int], None] | None = None,
                     slice_step: int | None = None, mode: str | None = None,
                     value_scale: float | None = None, out: np.ndarray | None = None,
                     **overrides: Any) -> np.ndarray:
        """Heatmap of every slice of a volume, on the volume's own grid.

        Each scored slice is resampled (antialiased bilinear) from ``pixel_spacing_mm`` to
        ``card["pixel_spacing_mm"]``, scored with :meth:`heatmap` and resampled back
        (:mod:`models.stream`). Slices are streamed: one is converted to float32 at a time
        (the next one is prepared in a background thread with ``prefetch``); only the
        output is allocated in full (or pass ``out``, e.g. a memory map).

        Parameters
        ----------
        volume : np.ndarray
            (Z, H, W) in [0, 1], or integer stored values with ``value_scale``.
        pixel_spacing_mm : float or (float, float)
            In-plane spacing (row, column) of ``volume``.
        progress : callable, optional
            ``progress(done_slices, total_scored_slices)``.
        slice_step : int, optional
            Score every ``slice_step``-th slice (and the last one); the others are
            interpolated linearly along z. Default: 1 in exact mode, the card's
            ``inference.slice_step`` (4) in fast mode.
        mode : {"fast", "exact"}, optional
            As :meth:`heatmap`.
        value_scale : float, optional
            Multiply each slice by this (e.g. ``1 / 65535``); required for integer volumes.
        out : np.ndarray, optional
            (Z, H, W) float32 array to write into (returned).
        **overrides
            As :meth:`heatmap`.

        Returns
        -------
        np.ndarray
            (Z, H, W) float32. Work counters in :attr:`last_stats`.
        """
        return self._score_volume(volume, pixel_spacing_mm, progress, slice_step, mode,
                                  value_scale, out, None, overrides, spread=False).heatmap

    def score_volume_with_spread(
            self, volume: np.ndarray, *, pixel_spacing_mm: float | tuple[float, float],
            mode: str | None = None, progress: Callable[[int, int], None] | None = None,
            slice_step: int | None = None, value_scale: float | None = None,
            out: np.ndarray | None = None, spread_out: np.ndarray | None = None,
            **overrides: Any) -> VolumeScores:
        """:meth:`score_volume` plus the completion spread, from the same completions.

        Spread of a window: mean over its hole of the per-pixel standard deviation across
        its M completions, in slice intensity units (the [0, 1] scale the model scores, i.e.
        stored value times ``value_scale``; :func:`models.explain.completion_spread`). It
        is mapped onto the volume exactly like the scores (same windows, air filling,
        upsampling, air pixels 0, resampling, interpolation of skipped slices).

        Parameters
        ----------
        volume, pixel_spacing_mm, mode, progress, slice_step, value_scale, out, **overrides
            As :meth:`score_volume`; ``heatmap`` equals its result for the same inputs.
        spread_out : np.ndarray, optional
            (Z, H, W) float32 array to write the spread into (exact mode).

        Returns
        -------
        VolumeScores
            ``spread`` is None in fast mode: there most windows get fewer than M samples
            or are interpolated from a coarse grid, so no honest spread exists
            (:meth:`spread_description` is None too).
        """
        return self._score_volume(volume, pixel_spacing_mm, progress, slice_step, mode,
                                  value_scale, out, spread_out, overrides, spread=True)

    def _score_volume(self, volume: np.ndarray, pixel_spacing_mm: float | tuple[float, float],
                      progress: Callable[[int, int], None] | None, slice_step: int | None,
                      mode: str | None, value_scale: float | None, out: np.ndarray | None,
                      spread_out: np.ndarray | None, overrides: dict[str, Any], *,
                      spread: bool) -> VolumeScores:
        _stream.check_volume(volume, value_scale)
        overrides = dict(overrides)
        switches = {k: overrides.pop(k) for k in list(overrides) if k in INFERENCE_KEYS}
        icfg = self.inference_config(mode, **switches)
        if slice_step is None:
            slice_step = icfg.slice_step if icfg.mode == "fast" else 1
        # air is set to 0 on the volume's own grid after resampling back (stream), not on
        # the model grid, where a coarse air pixel would pull the skin line's scores to 0
        mask_background = bool(overrides.pop("mask_background", True))
        model_grid = {**overrides, "mask_background": False}
        self._settings(overrides)  # fail early on bad overrides
        spread = spread and icfg.mode == "exact"
        stats = InferenceStats(mode=icfg.mode, slices_total=volume.shape[0],
                               config={**icfg.as_dict(), "slice_step": slice_step})

        def slice_maps(img: np.ndarray) -> list[np.ndarray]:
            stats.slices_scored += 1
            heat, spr = self._heatmap(img, icfg, stats, None, model_grid, spread=spread)
            return [heat] if spr is None else [heat, spr]

        t0 = time.perf_counter()
        try:
            maps = _stream.map_volume(volume, slice_maps, [out, spread_out][:1 + spread],
                                      pixel_spacing_mm=pixel_spacing_mm,
                                      target_mm=float(self.card["pixel_spacing_mm"]),
                                      slice_step=slice_step, value_scale=value_scale,
                                      prefetch=icfg.prefetch, progress=progress,
                                      background_level=(float(self.card["tissue_level"])
                                                        if mask_background else None))
        finally:
            stats.seconds = time.perf_counter() - t0
            self.last_stats = stats
        return VolumeScores(heatmap=maps[0], spread=maps[1] if spread else None)

    def spread_description(self, mode: str | None = None) -> dict[str, Any] | None:
        """What :meth:`score_volume_with_spread` reports as ``spread``, for labels and records.

        Returns
        -------
        dict or None
            ``quantity``, ``statistic``, ``space`` (``image``: the spread is measured on
            pixels whatever the scoring space), ``M``, ``p``, ``mode`` and ``units``;
            None in fast mode, which computes no spread.
        """
        return _settings.spread_description(self.card, self.inference_config(mode))

    def expected_completion(self, image: np.ndarray, center_rc: tuple[int, int], *,
                            pixel_spacing_mm: float | tuple[float, float],
                            m: int | None = None, seed: int = 0,
                            value_scale: float | None = None) -> ExpectedCompletion:
        """What the model expected at a finding: the nearest of M completions, pasted in.

        The slice is brought to the model's grid as in :meth:`score_volume`; the window
        centred on ``center_rc`` (shifted to lie inside the slice, so near the border the
        hole is off-centre) has its hole completed ``m`` times with dropout on (card ``p``);
        the completion nearest to the real content in the card's metric space (the
        distance of MCD) is mapped back to the slice's units and grid. Pixels outside the
        hole keep their input values exactly.

        Parameters
        ----------
        image : np.ndarray
            (H, W) slice in its stored units: [0, 1], or any values with ``value_scale``
            (required for integer slices), as a slice of :meth:`score_volume`'s volume.
        center_rc : (int, int)
            Row and column of the finding on ``image``.
        pixel_spacing_mm : float or (float, float)
            In-plane spacing (row, column) of ``image``.
        m : int, optional
            Completions to draw; default the card's ``M``.
        seed : int
            Fixes the dropout draws.
        value_scale : float, optional
            Maps stored values to [0, 1] (as in :meth:`score_volume`).

        Returns
        -------
        ExpectedCompletion
            ``image`` (float32, input units), ``hole``, ``distance`` (network units, as MCD).
        """
        m = int(self.card["M"] if m is None else m)
        if m < 1:
            raise ValueError(f"m must be >= 1, got {m!r}")
        config, s = self._settings({})

        def sampler(window: torch.Tensor, mask: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor]:
            x, mk = self._check_inputs(window, mask)
            with self._seeded(seed):
                comps = self.complete(x, mk, m, True, p=s["p"])
            with torch.inference_mode():
                return comps, self._distances(x, mk, comps, s["space"])

        return _explain.nearest_completion(image, center_rc, sampler, config,
                                           pixel_spacing_mm=pixel_spacing_mm,
                                           target_mm=float(self.card["pixel_spacing_mm"]),
                                           value_scale=value_scale)
