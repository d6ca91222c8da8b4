"""Training the PICARD completion network on normal tissue (WGAN-GP, DeepFill v1 losses).

PICARD trains an inpainting network on windows of **normal** images only; pluralistic
completion comes later, from dropout switched on at inference (the network is trained
without dropout, as the official code does). The objective follows the official
``inpainter/trainer.py`` and ``configs/default.yaml`` (Konz et al. 2023, after Yu et al.
2018):

* generator: ``1.2 * L1_hole + 1.2 * L1_AE + 0.001 * WGAN_G`` where ``L1_hole`` is the L1 of
  coarse (weight 1.2) and refined outputs on the hole's bounding box, weighted by the
  spatial-discounting mask (``gamma = 0.9``), ``L1_AE`` the L1 outside the hole (coarse
  weighted 1.2), and ``WGAN_G`` the negated local + global critic scores;
* critics: WGAN loss of the local (hole box) and global (window) critics (global weight 1)
  plus a gradient penalty with ``lambda = 10``; five critic steps per generator step;
* Adam, learning rate 1e-4, betas (0.5, 0.9) for both.

Windows are random crops that contain tissue; the hole's box is placed at random in the
window (one position per batch) and each sample's hole shrinks by a random amount up to
``max_delta`` (the official 32 px at 256, scaled with the window). The generator is
chosen by the L1 of centred-hole completions of held-out windows. Checkpoints are written
atomically (:mod:`models._files`), and ``resume=True`` continues from the last one. The run
ends by writing a model bundle (:mod:`models.bundle`) with
:func:`models.lab.bundles.write_bundle_from_checkpoint`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import autograd

from models._files import atomic_torch_save, atomic_write_text
from models.lab.bundles import write_bundle_from_checkpoint
from models.networks import CompletionNetwork, Critic
from models.picard import resolve_device

logger = logging.getLogger(__name__)

__all__ = ["TrainConfig", "WindowSampler", "load_image_folder", "spatial_discounting_mask",
           "train", "warm_start"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
HISTORY = "history.json"


@dataclass
class TrainConfig:
    """Training settings (defaults: the reduced CPU configuration of the default bundle).

    Attributes
    ----------
    window, hole : int
        Window and hole side in pixels (official 256 / 128).
    max_delta : int
        Largest total shrink of the hole per side pair (official 32 at 256; 8 at 64).
    stride : int
        Heatmap stride written to the card (official 32).
    pixel_spacing_mm : float
        Pixel size the data are at; written to the card.
    ngf, ndf : int
        Generator / critic widths (official 32 / 32).
    batch_size : int
        Windows per step (official 55).
    iterations : int
        Critic steps in total; the generator steps every ``n_critic``-th.
    n_critic : int
        Critic steps per generator step (official 5).
    lr, beta1, beta2 : float
        Adam settings (official 1e-4, 0.5, 0.9).
    coarse_l1_alpha, l1_loss_alpha, ae_loss_alpha, gan_loss_alpha : float
        Loss weights (official 1.2, 1.2, 1.2, 0.001).
    global_wgan_loss_alpha, wgan_gp_lambda : float
        Global critic weight (1) and gradient-penalty weight (10).
    spatial_discounting_gamma : float
        Spatial discounting of the hole L1 (official 0.9).
    tissue_level : float
        Pixel value above which a pixel is tissue.
    min_tissue_fraction : float
        A training window's hole box must hold at least this fraction of tissue.
    val_fraction : float
        Share of the input arrays held out for validation (at least one when there are two).
    val_windows : int
        Fixed held-out windows for the validation L1.
    val_every, checkpoint_every, log_every : int
        In critic iterations.
    max_minutes : float or None
        Stop (and write the bundle) after this wall time.
    threads : int
        ``torch.set_num_threads`` for the run.
    seed : int
        Seeds windows, holes and weights.
    m, metric : int, str
        Card's inference M and metric.
    """

    window: int = 64
    hole: int = 32
    max_delta: int = 8
    stride: int = 16
    pixel_spacing_mm: float = 0.4
    ngf: int = 8
    ndf: int = 8
    batch_size: int = 16
    iterations: int = 20000
    n_critic: int = 5
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.9
    coarse_l1_alpha: float = 1.2
    l1_loss_alpha: float = 1.2
    ae_loss_alpha: float = 1.2
    gan_loss_alpha: float = 0.001
    global_wgan_loss_alpha: float = 1.0
    wgan_gp_lambda: float = 10.0
    spatial_discounting_gamma: float = 0.9
    tissue_level: float = 0.02
    min_tissue_fraction: float = 0.5
    val_fraction: float = 0.1
    val_windows: int = 128
    val_every: int = 250
    checkpoint_every: int = 250
    log_every: int = 50
    max_minutes: float | None = None
    threads: int = 1
    seed: int = 0
    m: int = 10
    metric: str = "MCD_image"

    def __post_init__(self) -> None:
        if self.window % 16:
            raise ValueError(f"window must be a multiple of 16, got {self.window}")
        if not 0 < self.hole < self.window or self.hole % 16:
            raise ValueError(f"hole must be a multiple of 16 in (0, window), got {self.hole}")
        if not 0 <= self.max_delta < self.hole:
            raise ValueError(f"max_delta must be in [0, hole), got {self.max_delta}")
        if self.batch_size < 1 or self.iterations < 1 or self.n_critic < 1:
            raise ValueError("batch_size, iterations and n_critic must be >= 1")


def spatial_discounting_mask(height: int, width: int, gamma: float) -> torch.Tensor:
    """DeepFill spatial discounting weights ``max(gamma**d_row, gamma**d_col)``, (1, 1, h, w).

    ``d_row`` (``d_col``) is the distance of a pixel to the nearer of the top and bottom
    (left and right) edges of the hole box, as the official code computes it.
    """
    i = np.arange(height)
    j = np.arange(width)
    di = np.minimum(i, height - i)[:, None]
    dj = np.minimum(j, width - j)[None, :]
    w = np.maximum(gamma ** di, gamma ** dj).astype(np.float32)
    return torch.from_numpy(w)[None, None]


# ------------------------------------------------------------------------------------ data


def load_image_folder(folder: str | Path) -> list[np.ndarray]:
    """Read ``*.png`` (8 or 16 bit, scaled to [0, 1] by the type maximum) and ``*.npy``
    (float, expected in [0, 1]; 2D or 3D) files of a folder, sorted by name."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"training image folder {folder} does not exist")
    arrays: list[np.ndarray] = []
    for path in sorted(folder.iterdir()):
        suffix = path.suffix.lower()
        if suffix == ".npy":
            arr = np.load(path).astype(np.float32)
        elif suffix == ".png":
            with Image.open(path) as im:
                raw = np.asarray(im)
            if raw.ndim == 3:
                raw = raw[..., 0]
            scale = 65535.0 if raw.dtype == np.uint16 else 255.0
            arr = raw.astype(np.float32) / scale
        else:
            continue
        if arr.ndim not in (2, 3) or not np.isfinite(arr).all():
            raise ValueError(f"{path}: expected a finite 2D or 3D array, got shape {arr.shape}")
        if arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{path}: values must be in [0, 1], got [{arr.min()}, {arr.max()}]")
        arrays.append(arr)
    if not arrays:
        raise ValueError(f"no .png or .npy images in {folder}")
    return arrays


class WindowSampler:
    """Random tissue windows from a list of 2D/3D arrays in [0, 1].

    Parameters
    ----------
    arrays : sequence of numpy.ndarray
        ``(H, W)`` images or ``(Z, H, W)`` volumes (stored as float16 internally).
    window : int
        Window side.
    tissue_level : float
        Tissue threshold.
    rng : numpy.random.Generator
        Source of randomness.
    """

    def __init__(self, arrays: Sequence[np.ndarray], window: int, tissue_level: float,
                 rng: np.random.Generator) -> None:
        self.window = window
        self.rng = rng
        self.tissue_level = tissue_level
        self.arrays: list[np.ndarray] = []
        self.integrals: list[np.ndarray] = []
        for k, a in enumerate(arrays):
            a = np.asarray(a)
            if a.ndim == 2:
                a = a[None]
            if a.ndim != 3:
                raise ValueError(f"training array {k} must be 2D or 3D, got shape {a.shape}")
            if a.shape[1] < window or a.shape[2] < window:
                raise ValueError(f"training array {k} of shape {a.shape} is smaller than the "
                                 f"{window}px window")
            a16 = a.astype(np.float16)
            tissue = (a16.max(axis=0) > tissue_level).astype(np.float64)
            integral = np.pad(tissue.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
            self.arrays.append(a16)
            self.integrals.append(integral)
        if not self.arrays:
            raise ValueError("no training arrays")

    def _fraction(self, k: int, y: int, x: int, box: tuple[int, int, int, int]) -> float:
        t, l, h, w = box
        ii = self.integrals[k]
        y0, x0, y1, x1 = y + t, x + l, y + t + h, x + l + w
        return float(ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) / (h * w)

    def sample(self, n: int, box: tuple[int, int, int, int], min_fraction: float,
               tries: int = 50) -> np.ndarray:
        """``n`` windows ``(n, 1, window, window)`` float32 whose ``box`` (t, l, h, w) holds at
        least ``min_fraction`` tissue (the best of ``tries`` draws otherwise)."""
        out = np.empty((n, 1, self.window, self.window), np.float32)
        for i in range(n):
            best, best_f = None, -1.0
            for _ in range(tries):
                k = int(self.rng.integers(len(self.arrays)))
                a = self.arrays[k]
                y = int(self.rng.integers(0, a.shape[1] - self.window + 1))
                x = int(self.rng.integers(0, a.shape[2] - self.window + 1))
                f = self._fraction(k, y, x, box)
                if f > best_f:
                    best, best_f = (k, y, x), f
                if f >= min_fraction:
                    break
            k, y, x = best  # type: ignore[misc]
            z = int(self.rng.integers(0, self.arrays[k].shape[0]))
            out[i, 0] = self.arrays[k][z, y:y + self.window, x:x + self.window]
        return out


# ------------------------------------------------------------------------------------ losses


def _gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    alpha = torch.rand(real.shape[0], 1, 1, 1).to(real.device)  # CPU draws: same on any device
    inter = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    out = critic(inter)
    grad = autograd.grad(out, inter, grad_outputs=torch.ones_like(out), create_graph=True)[0]
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def _crop(x: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    t, l, h, w = box
    return x[:, :, t:t + h, l:l + w]


class _Trainer:
    """Networks, optimisers and one training step."""

    def __init__(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.gen = CompletionNetwork(ngf=cfg.ngf).to(device)
        self.gen.set_dropout(None)
        self.local = Critic(cfg.ndf, cfg.hole).to(device)
        self.glob = Critic(cfg.ndf, cfg.window).to(device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.Adam(list(self.local.parameters()) + list(self.glob.parameters()),
                                      lr=cfg.lr, betas=betas)
        self.sd_mask = spatial_discounting_mask(cfg.hole, cfg.hole,
                                                cfg.spatial_discounting_gamma).to(device)

    def masks(self, n: int, box: tuple[int, int, int, int], rng: np.random.Generator) -> torch.Tensor:
        """Hole masks of the box, each shrunk by a random delta (official ``bbox2mask``)."""
        t, l, h, w = box
        mask = torch.zeros(n, 1, self.cfg.window, self.cfg.window)
        half = self.cfg.max_delta // 2
        for i in range(n):
            dh = int(rng.integers(0, half + 1))
            dw = int(rng.integers(0, half + 1))
            mask[i, :, t + dh:t + h - dh, l + dw:l + w - dw] = 1.0
        return mask.to(self.device)

    def step(self, gt: torch.Tensor, mask: torch.Tensor, box: tuple[int, int, int, int],
             train_g: bool) -> dict[str, float]:
        cfg = self.cfg
        x = gt * (1.0 - mask)
        self.gen.train(train_g)
        with torch.set_grad_enabled(train_g):
            x1, x2 = self.gen(x, mask)
        x1_in = x1 * mask + x * (1.0 - mask)
        x2_in = x2 * mask + x * (1.0 - mask)
        local_gt = _crop(gt, box)
        local_x1 = _crop(x1_in, box)
        local_x2 = _crop(x2_in, box)
        # critics
        for p in list(self.local.parameters()) + list(self.glob.parameters()):
            p.requires_grad_(True)
        fake_l, fake_g = local_x2.detach(), x2_in.detach()
        wgan_d = (self.local(fake_l).mean() - self.local(local_gt).mean()) + \
            cfg.global_wgan_loss_alpha * (self.glob(fake_g).mean() - self.glob(gt).mean())
        gp = _gradient_penalty(self.local, local_gt, fake_l) + \
            _gradient_penalty(self.glob, gt, fake_g)
        d_loss = wgan_d + cfg.wgan_gp_lambda * gp
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()
        out = {"wgan_d": float(wgan_d.detach()), "wgan_gp": float(gp.detach()),
               "d": float(d_loss.detach())}
        if train_g:
            for p in list(self.local.parameters()) + list(self.glob.parameters()):
                p.requires_grad_(False)
            sd = self.sd_mask
            l1 = cfg.coarse_l1_alpha * F.l1_loss(local_x1 * sd, local_gt * sd) + \
                F.l1_loss(local_x2 * sd, local_gt * sd)
            ae = cfg.coarse_l1_alpha * F.l1_loss(x1 * (1 - mask), gt * (1 - mask)) + \
                F.l1_loss(x2 * (1 - mask), gt * (1 - mask))
            wgan_g = -self.local(local_x2).mean() - \
                cfg.global_wgan_loss_alpha * self.glob(x2_in).mean()
            g_loss = cfg.l1_loss_alpha * l1 + cfg.ae_loss_alpha * ae + cfg.gan_loss_alpha * wgan_g
            self.opt_g.zero_grad(set_to_none=True)
            g_loss.backward()
            self.opt_g.step()
            out.update(l1=float(l1.detach()), ae=float(ae.detach()), wgan_g=float(wgan_g.detach()),
                       g=float(g_loss.detach()))
        self.gen.eval()
        return out

    def validate(self, windows: torch.Tensor) -> float:
        """Mean L1 (in [-1, 1] units) of deterministic centred-hole completions over the hole."""
        cfg = self.cfg
        mask = torch.zeros(1, 1, cfg.window, cfg.window, device=self.device)
        a = (cfg.window - cfg.hole) // 2
        mask[:, :, a:a + cfg.hole, a:a + cfg.hole] = 1.0
        self.gen.eval()
        total = 0.0
        with torch.inference_mode():
            for s in range(0, windows.shape[0], 64):
                gt = windows[s:s + 64].to(self.device)
                _, x2 = self.gen(gt * (1 - mask), mask)
                total += float(((x2 - gt).abs() * mask).sum()) / float(mask.sum())
        return total / windows.shape[0]

    def state(self) -> dict[str, Any]:
        return {"gen": self.gen.state_dict(), "localD": self.local.state_dict(),
                "globalD": self.glob.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": self.opt_d.state_dict()}

    def load(self, state: dict[str, Any]) -> None:
        self.gen.load_state_dict(state["gen"])
        self.local.load_state_dict(state["localD"])
        self.glob.load_state_dict(state["globalD"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])


def _cpu(state: Any) -> Any:
    """A state dict (nested) with every tensor on the CPU, so checkpoints load anywhere."""
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, list):
        return [_cpu(v) for v in state]
    return state


def _best_state(trainer: _Trainer, iteration: int, val_l1: float) -> dict[str, Any]:
    """Contents of ``best.pt``: the networks (no optimisers) and their validation L1."""
    return {"gen": _cpu(trainer.gen.state_dict()), "localD": _cpu(trainer.local.state_dict()),
            "globalD": _cpu(trainer.glob.state_dict()), "iteration": iteration,
            "val_l1": val_l1}


def _to_tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a) * 2.0 - 1.0  # [0, 1] -> [-1, 1] (card intensity "fixed")


def warm_start(trainer: _Trainer, bundle_dir: str | Path) -> None:
    """Load a bundle's generator and critics into ``trainer`` (architecture must match).

    The bundle's card must have the same ``window`` and ``hole`` (the critics' input sizes)
    and its weights the same layer shapes as the trainer's networks (same ``ngf``/``ndf``);
    otherwise a ``ValueError`` names the first difference. The optimisers start afresh.
    """
    from models.bundle import read_bundle

    bundle_dir = Path(bundle_dir)
    gen, dis, card = read_bundle(bundle_dir)
    cfg = trainer.cfg
    for key in ("window", "hole"):
        if int(card[key]) != getattr(cfg, key):
            raise ValueError(f"cannot warm-start from {bundle_dir}: bundle {key}={card[key]!r}, "
                             f"config {key}={getattr(cfg, key)!r}")
    for name, net, state in (("generator", trainer.gen, gen),
                             ("local critic", trainer.local, dis.get("localD", {})),
                             ("global critic", trainer.glob, dis.get("globalD", {}))):
        own = net.state_dict()
        if set(own) != set(state):
            raise ValueError(f"cannot warm-start from {bundle_dir}: {name} layers differ "
                             f"(missing {sorted(set(own) - set(state))[:3]}, unexpected "
                             f"{sorted(set(state) - set(own))[:3]})")
        for k, v in own.items():
            if tuple(v.shape) != tuple(state[k].shape):
                raise ValueError(f"cannot warm-start from {bundle_dir}: {name} {k} has shape "
                                 f"{tuple(state[k].shape)}, config needs {tuple(v.shape)} "
                                 f"(ngf={cfg.ngf}, ndf={cfg.ndf})")
        net.load_state_dict(state)
    logger.info("warm start: generator and critics from %s (version %s)", bundle_dir,
                card.get("version"))


def train(config: TrainConfig, data: Iterable[np.ndarray] | list[np.ndarray], out_dir: Path, *,
          resume: bool = False, progress: bool = True, card_extra: dict[str, Any] | None = None,
          device: str | torch.device = "cpu", init_from: str | Path | None = None) -> Path:
    """Train on normal arrays and write a model bundle.

    Parameters
    ----------
    config : TrainConfig
        Settings.
    data : iterable of numpy.ndarray
        Normal images ``(H, W)`` or volumes ``(Z, H, W)`` in ``[0, 1]`` at
        ``config.pixel_spacing_mm``. The last ``val_fraction`` of them are held out.
    out_dir : pathlib.Path
        Receives ``checkpoint.pt`` (last state), ``best.pt`` (best validation L1),
        ``history.json`` and ``bundle/`` (the best generator as a model bundle).
    resume : bool
        Continue from ``out_dir/checkpoint.pt`` (its config must match in the network and
        window settings).
    progress : bool
        Show a tqdm progress bar.
    card_extra : dict, optional
        Extra entries for the model card (e.g. ``training`` text, ``metrics``).
    device : str or torch.device
        Where the networks train: ``"cpu"``, ``"cuda"``, ``"cuda:N"``. Checkpoints are
        stored on the CPU, so a run started on a GPU resumes anywhere.
    init_from : str or pathlib.Path, optional
        A model bundle whose generator and critics weights start the run (warm start,
        :func:`warm_start`; same window, hole, ngf and ndf). Ignored when ``resume`` finds a
        checkpoint (the checkpoint already holds the continued weights).

    Returns
    -------
    pathlib.Path
        The bundle folder ``out_dir/bundle``.
    """
    cfg = config
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    arrays = [np.asarray(a, dtype=np.float32) for a in data]
    if not arrays:
        raise ValueError("no training data")
    for k, a in enumerate(arrays):
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            raise ValueError(f"training array {k} must be finite and in [0, 1]")
    n_val = max(1, round(cfg.val_fraction * len(arrays))) if len(arrays) >= 2 else 0
    train_arrays = arrays[:len(arrays) - n_val]
    val_arrays = arrays[len(arrays) - n_val:] or arrays
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    sampler = WindowSampler(train_arrays, cfg.window, cfg.tissue_level, rng)
    a = (cfg.window - cfg.hole) // 2
    centre_box = (a, a, cfg.hole, cfg.hole)
    val_sampler = WindowSampler(val_arrays, cfg.window, cfg.tissue_level,
                                np.random.default_rng(cfg.seed + 1))
    val = _to_tensor(val_sampler.sample(cfg.val_windows, centre_box, cfg.min_tissue_fraction))
    del arrays

    device = resolve_device(device)
    trainer = _Trainer(cfg, device)
    start = 1
    history: list[dict[str, float]] = []
    best_val = math.inf
    ckpt_path = out_dir / CHECKPOINT
    if resume and ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        saved = ckpt["config"]
        for key in ("window", "hole", "ngf", "ndf"):
            if saved[key] != getattr(cfg, key):
                raise ValueError(f"cannot resume: checkpoint {key}={saved[key]!r}, "
                                 f"config {key}={getattr(cfg, key)!r}")
        trainer.load(ckpt["state"])
        start = ckpt["iteration"] + 1
        best_val = ckpt["best_val"]
        history = ckpt["history"]
        rng.bit_generator.state = ckpt["rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        logger.info("resumed from %s at iteration %d (best val L1 %.4f)", ckpt_path, start - 1,
                    best_val)
    else:
        if resume:
            logger.info("no checkpoint in %s; starting afresh", out_dir)
        if init_from is not None:
            warm_start(trainer, init_from)

    def checkpoint(iteration: int) -> None:
        atomic_torch_save(ckpt_path, {
            "state": _cpu(trainer.state()), "iteration": iteration, "best_val": best_val,
            "history": history, "rng": rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(), "config": dataclasses.asdict(cfg)})
        atomic_write_text(out_dir / HISTORY, json.dumps(history, indent=1))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=start - 1, unit="it", mininterval=5.0)
    t0 = time.time()
    running: dict[str, list[float]] = {}
    iteration = start - 1
    for iteration in range(start, cfg.iterations + 1):
        t = int(rng.integers(0, cfg.window - cfg.hole + 1))
        l = int(rng.integers(0, cfg.window - cfg.hole + 1))
        box = (t, l, cfg.hole, cfg.hole)
        gt = _to_tensor(sampler.sample(cfg.batch_size, box, cfg.min_tissue_fraction)).to(device)
        mask = trainer.masks(cfg.batch_size, box, rng)
        losses = trainer.step(gt, mask, box, train_g=iteration % cfg.n_critic == 0)
        for k, v in losses.items():
            running.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(1)
        if iteration % cfg.val_every == 0 or iteration == cfg.iterations:
            v = trainer.validate(val)
            entry = {"iteration": iteration, "val_l1": v, "minutes": (time.time() - t0) / 60,
                     **{k: float(np.mean(x)) for k, x in running.items()}}
            running = {}
            history.append(entry)
            logger.info("iter %d val_l1 %.4f %s", iteration, v,
                        " ".join(f"{k} {x:.4f}" for k, x in entry.items()
                                 if k not in ("iteration", "val_l1")))
            if v < best_val:
                best_val = v
                atomic_torch_save(out_dir / BEST, _best_state(trainer, iteration, v))
        if iteration % cfg.checkpoint_every == 0:
            checkpoint(iteration)
        if cfg.max_minutes is not None and (time.time() - t0) / 60 > cfg.max_minutes:
            logger.info("time budget of %.1f min reached at iteration %d", cfg.max_minutes,
                        iteration)
            break
    if bar is not None:
        bar.close()
    if not history or history[-1]["iteration"] != iteration:
        v = trainer.validate(val)
        history.append({"iteration": iteration, "val_l1": v,
                        "minutes": (time.time() - t0) / 60})
        if v < best_val or not (out_dir / BEST).is_file():
            best_val = v
            atomic_torch_save(out_dir / BEST, _best_state(trainer, iteration, v))
    checkpoint(iteration)
    return write_bundle_from_checkpoint(out_dir / BEST, cfg, out_dir / "bundle",
                                        card_extra=card_extra)
