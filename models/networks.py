"""DeepFill-v1 completion network and WGAN critics, state-dict compatible with PICARD.

PICARD (Konz et al., "Unsupervised anomaly localization in high-resolution breast scans
using deep pluralistic image completion", Med. Image Anal. 87:102836, 2023,
arXiv:2305.03098) uses the two-stage inpainting network of Yu et al. ("Generative Image
Inpainting with Contextual Attention", CVPR 2018) as its completion network:

* :class:`CoarseNetwork` -- an encoder (two stride-2 convolutions), four dilated
  convolutions (rate 2, 4, 8, 16) and a decoder with nearest-neighbour upsampling; ELU
  after every convolution but the last, output clamped to ``[-1, 1]``.
* :class:`RefinementNetwork` -- a dilated-convolution branch and a contextual-attention
  branch (:class:`ContextualAttention`) working on the coarse result pasted into the
  hole, merged by a shared decoder.
* :class:`Critic` -- four 5x5 stride-2 convolutions with LeakyReLU(0.2) and a linear
  head. The local critic sees the hole (128 x 128 for the official settings) and its
  convolution features (``ndf*4 x 8 x 8``) are the feature space of ``MCD_feature``.

Pluralistic completion: channel-wise dropout (``Dropout2d``) after the activation of
selected convolutions stays active at inference. Every convolution block owns a
``dropout`` sub-module exactly where the official code puts one; :meth:`CompletionNetwork.
set_dropout` switches on the listed ones (the others are identity), so the rest of the
network is always in evaluation mode.

The module and parameter names follow the official checkpoints (``gen_*.pt`` holds
``CompletionNetwork.state_dict()``, ``dis_*.pt`` holds ``{"localD": ..., "globalD": ...}``
of two :class:`Critic`), so those files load unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    "OFFICIAL_COARSE_DROPOUT_LAYERS",
    "CompletionNetwork",
    "CoarseNetwork",
    "RefinementNetwork",
    "ContextualAttention",
    "ConvBlock",
    "Critic",
    "count_parameters",
    "he_normal_",
]

#: Layers of the coarse network whose dropout is on at inference in the official
#: configuration (``configs/default.yaml``, ``netG.custom_drop_layers_coarse``). The
#: official fine-network list never matches a module name, so no fine layer drops.
OFFICIAL_COARSE_DROPOUT_LAYERS: tuple[str, ...] = (
    "coarse_generator.conv2_downsample",
    "coarse_generator.conv3",
    "coarse_generator.conv4_downsample",
    "coarse_generator.conv5",
    "coarse_generator.conv6",
    "coarse_generator.conv7_atrous",
    "coarse_generator.conv8_atrous",
    "coarse_generator.conv9_atrous",
    "coarse_generator.conv10_atrous",
)


class ConvBlock(nn.Module):
    """Convolution, activation, then (optionally) channel dropout.

    Parameters
    ----------
    in_channels, out_channels : int
        Channel counts.
    kernel_size, stride, padding, dilation : int
        Convolution geometry (zero padding).
    activation : {"elu", "relu", "lrelu", "none"}
        Activation after the convolution (``lrelu`` has slope 0.2).
    dropout : bool
        Whether the block has a ``Dropout2d`` sub-module (inactive until
        :meth:`set_dropout` switches it on).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        *,
        activation: str = "elu",
        dropout: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride, padding=padding, dilation=dilation
        )
        activations = {
            "elu": nn.ELU,
            "relu": nn.ReLU,
            "lrelu": lambda: nn.LeakyReLU(0.2),
            "none": nn.Identity,
        }
        if activation not in activations:
            raise ValueError(
                f"activation must be one of {sorted(activations)}, got {activation!r}"
            )
        self.activation = activations[activation]()
        self.dropout: nn.Dropout2d | None = nn.Dropout2d(0.5) if dropout else None
        self.drop_active = False

    def set_dropout(self, active: bool, p: float = 0.5) -> None:
        """Switch this block's dropout on or off (``ValueError`` if it has none)."""
        if self.dropout is None:
            if active:
                raise ValueError("this block has no dropout layer")
            return
        self.dropout.p = p
        self.drop_active = active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.activation(self.conv(x))
        if self.dropout is not None and self.drop_active:
            x = F.dropout2d(x, self.dropout.p, training=True)
        return x


def _block(cin: int, cout: int, k: int = 3, s: int = 1, rate: int = 1, *,
           activation: str = "elu", dropout: bool = True) -> ConvBlock:
    """Generator block: 'same' padding for odd ``k`` (``rate * (k - 1) / 2``)."""
    return ConvBlock(cin, cout, k, s, padding=rate * (k - 1) // 2, dilation=rate,
                     activation=activation, dropout=dropout)


def _with_boundary_channels(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Concatenate an all-ones channel (image boundary) and the mask."""
    ones = torch.ones_like(x[:, :1])
    return torch.cat([x, ones, mask.expand(x.shape[0], -1, -1, -1).to(x.dtype)], dim=1)


class CoarseNetwork(nn.Module):
    """First stage: dilated encoder-decoder producing a rough completion.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for DBT).
    ngf : int
        Base width (32 in the official model).
    """

    def __init__(self, in_channels: int = 1, ngf: int = 32) -> None:
        super().__init__()
        c = ngf
        self.conv1 = _block(in_channels + 2, c, 5, dropout=False)
        self.conv2_downsample = _block(c, 2 * c, 3, 2)
        self.conv3 = _block(2 * c, 2 * c)
        self.conv4_downsample = _block(2 * c, 4 * c, 3, 2)
        self.conv5 = _block(4 * c, 4 * c)
        self.conv6 = _block(4 * c, 4 * c)
        self.conv7_atrous = _block(4 * c, 4 * c, rate=2)
        self.conv8_atrous = _block(4 * c, 4 * c, rate=4)
        self.conv9_atrous = _block(4 * c, 4 * c, rate=8)
        self.conv10_atrous = _block(4 * c, 4 * c, rate=16)
        self.conv11 = _block(4 * c, 4 * c)
        self.conv12 = _block(4 * c, 4 * c)
        self.conv13 = _block(4 * c, 2 * c)
        self.conv14 = _block(2 * c, 2 * c)
        self.conv15 = _block(2 * c, c)
        self.conv16 = _block(c, c // 2)
        self.conv17 = _block(c // 2, in_channels, activation="none", dropout=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Coarse completion of ``x`` (hole zeroed by the caller), clamped to [-1, 1]."""
        x = self.conv1(_with_boundary_channels(x, mask))
        for name in ("conv2_downsample", "conv3", "conv4_downsample", "conv5", "conv6",
                     "conv7_atrous", "conv8_atrous", "conv9_atrous", "conv10_atrous",
                     "conv11", "conv12"):
            x = getattr(self, name)(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv14(self.conv13(x))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = self.conv17(self.conv16(self.conv15(x)))
        return torch.clamp(x, -1.0, 1.0)


class ContextualAttention(nn.Module):
    """Contextual attention (Yu et al. 2018) with the DeepFill-v1 conventions.

    Foreground features are matched against 3x3 patches of the background at half
    resolution (``rate``), scores are fused along both image axes (``fuse_k``), masked
    so that only patches fully outside the hole are used, soft-maxed with
    ``softmax_scale`` and used to paste ``2*rate``-sized raw background patches by a
    transposed convolution (divided by 4, as the reference).

    Unlike the reference, which takes the hole of the first sample for the whole batch,
    each sample uses its own mask (identical results for a batch sharing one mask).
    Samples are processed in chunks of ``chunk`` (bounds the (L, H, W) score memory).
    """

    def __init__(self, ksize: int = 3, stride: int = 1, rate: int = 2, fuse_k: int = 3,
                 softmax_scale: float = 10.0, fuse: bool = True, chunk: int = 16) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError(f"only stride 1 is supported, got {stride}")
        self.ksize = ksize
        self.stride = stride
        self.rate = rate
        self.fuse_k = fuse_k
        self.softmax_scale = softmax_scale
        self.fuse = fuse
        self.chunk = chunk

    @staticmethod
    def _patches(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
        """TensorFlow-style 'same' patches: (N, L, C, k, k)."""
        n, c, h, w = x.shape
        out_h, out_w = -(-h // s), -(-w // s)
        pad_h = max(0, (out_h - 1) * s + k - h)
        pad_w = max(0, (out_w - 1) * s + k - w)
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        cols = F.unfold(x, kernel_size=k, stride=s)  # (N, C*k*k, L)
        return cols.view(n, c, k, k, -1).permute(0, 4, 1, 2, 3)

    def _fuse(self, y: torch.Tensor, hb: int, wb: int, hf: int, wf: int) -> torch.Tensor:
        """Sum scores along diagonals of (background, foreground) index pairs twice:
        once in row-major order and once in column-major order."""
        n = y.shape[0]
        k = self.fuse_k
        eye = torch.eye(k, dtype=y.dtype, device=y.device).view(1, 1, k, k)
        y = y.reshape(n, 1, hb * wb, hf * wf)
        y = F.conv2d(y, eye, padding=k // 2)
        y = y.view(n, hb, wb, hf, wf).permute(0, 2, 1, 4, 3).reshape(n, 1, hb * wb, hf * wf)
        y = F.conv2d(y, eye, padding=k // 2)
        y = y.view(n, wb, hb, wf, hf).permute(0, 2, 1, 4, 3)
        return y.reshape(n, hb * wb, hf, wf)

    def forward(self, f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attend ``f`` to ``b``.

        Parameters
        ----------
        f, b : torch.Tensor
            Foreground and background features, (N, C, H, W), H and W divisible by
            ``rate``.
        mask : torch.Tensor
            Hole mask at image resolution (N or 1, 1, 4H, 4W), 1 inside the hole.

        Returns
        -------
        torch.Tensor
            (N, C, H, W) reconstructed features.
        """
        outs = [self._forward_chunk(f[i:i + self.chunk], b[i:i + self.chunk],
                                    mask if mask.shape[0] == 1 else mask[i:i + self.chunk])
                for i in range(0, f.shape[0], self.chunk)]
        return torch.cat(outs, dim=0)

    def _forward_chunk(self, f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor
                       ) -> torch.Tensor:
        n, c = b.shape[:2]
        r = self.rate
        raw_w = self._patches(b, 2 * r, r * self.stride)  # (N, L, C, 2r, 2r)
        f = F.interpolate(f, scale_factor=1.0 / r, mode="nearest")
        b = F.interpolate(b, scale_factor=1.0 / r, mode="nearest")
        hf, wf = f.shape[2:]
        hb, wb = b.shape[2:]
        w = self._patches(b, self.ksize, self.stride)  # (N, L, C, k, k)
        num_l = w.shape[1]

        m = F.interpolate(mask.to(f.dtype), scale_factor=1.0 / (4 * r), mode="nearest")
        m = self._patches(m, self.ksize, self.stride)  # (Nm, L, 1, k, k)
        usable = (m.mean(dim=(2, 3, 4)) == 0.0).to(f.dtype)  # (Nm, L)
        usable = usable.view(-1, num_l, 1, 1)

        # cosine-like matching score: patches normalised with the reference's epsilon
        norm = torch.sqrt((w.pow(2) + 1e-4).sum(4, keepdim=True).sum(3, keepdim=True)
                          .sum(2, keepdim=True))
        w_normed = w / norm
        # one convolution per sample: the same arithmetic as the reference (a grouped
        # convolution is not faster here and rounds differently)
        y = torch.cat([F.conv2d(f[i:i + 1], w_normed[i], padding=self.ksize // 2)
                       for i in range(n)])  # (N, L, hf, wf)
        if self.fuse:
            y = self._fuse(y, hb, wb, hf, wf)
        y = y * usable
        y = F.softmax(y * self.softmax_scale, dim=1)
        y = y * usable

        return torch.cat([F.conv_transpose2d(y[i:i + 1], raw_w[i], stride=r, padding=1)
                          for i in range(n)]) / 4.0


class RefinementNetwork(nn.Module):
    """Second stage: dilated branch + contextual-attention branch, shared decoder.

    Parameters
    ----------
    in_channels : int
        Image channels.
    ngf : int
        Base width.
    """

    def __init__(self, in_channels: int = 1, ngf: int = 32) -> None:
        super().__init__()
        c = ngf
        self.conv1 = _block(in_channels + 2, c, 5, dropout=False)
        self.conv2_downsample = _block(c, c, 3, 2)
        self.conv3 = _block(c, 2 * c)
        self.conv4_downsample = _block(2 * c, 2 * c, 3, 2)
        self.conv5 = _block(2 * c, 4 * c)
        self.conv6 = _block(4 * c, 4 * c)
        self.conv7_atrous = _block(4 * c, 4 * c, rate=2)
        self.conv8_atrous = _block(4 * c, 4 * c, rate=4)
        self.conv9_atrous = _block(4 * c, 4 * c, rate=8)
        self.conv10_atrous = _block(4 * c, 4 * c, rate=16)
        self.pmconv1 = _block(in_channels + 2, c, 5)
        self.pmconv2_downsample = _block(c, c, 3, 2)
        self.pmconv3 = _block(c, 2 * c)
        self.pmconv4_downsample = _block(2 * c, 4 * c, 3, 2)
        self.pmconv5 = _block(4 * c, 4 * c)
        self.pmconv6 = _block(4 * c, 4 * c, activation="relu")
        self.contextul_attention = ContextualAttention(ksize=3, stride=1, rate=2, fuse_k=3,
                                                       softmax_scale=10.0, fuse=True)
        self.pmconv9 = _block(4 * c, 4 * c)
        self.pmconv10 = _block(4 * c, 4 * c)
        self.allconv11 = _block(8 * c, 4 * c)
        self.allconv12 = _block(4 * c, 4 * c)
        self.allconv13 = _block(4 * c, 2 * c)
        self.allconv14 = _block(2 * c, 2 * c)
        self.allconv15 = _block(2 * c, c)
        self.allconv16 = _block(c, c // 2)
        self.allconv17 = _block(c // 2, in_channels, activation="none", dropout=False)

    def forward(self, x: torch.Tensor, coarse: torch.Tensor, mask: torch.Tensor
                ) -> torch.Tensor:
        """Refined completion, clamped to [-1, 1].

        ``x`` is the input with the hole zeroed, ``coarse`` the first-stage output.
        """
        pasted = coarse * mask + x * (1.0 - mask)
        xin = _with_boundary_channels(pasted, mask)
        h = xin
        for name in ("conv1", "conv2_downsample", "conv3", "conv4_downsample", "conv5",
                     "conv6", "conv7_atrous", "conv8_atrous", "conv9_atrous",
                     "conv10_atrous"):
            h = getattr(self, name)(h)
        a = xin
        for name in ("pmconv1", "pmconv2_downsample", "pmconv3", "pmconv4_downsample",
                     "pmconv5", "pmconv6"):
            a = getattr(self, name)(a)
        a = self.contextul_attention(a, a, mask)
        a = self.pmconv10(self.pmconv9(a))
        y = self.allconv12(self.allconv11(torch.cat([h, a], dim=1)))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = self.allconv14(self.allconv13(y))
        y = F.interpolate(y, scale_factor=2, mode="nearest")
        y = self.allconv17(self.allconv16(self.allconv15(y)))
        return torch.clamp(y, -1.0, 1.0)


class CompletionNetwork(nn.Module):
    """DeepFill-v1 generator (coarse + refinement), official key layout.

    Parameters
    ----------
    ngf : int
        Base width (official: 32, about 3.6 M parameters). Must be even.
    in_channels : int
        Image channels (1).

    Notes
    -----
    Input height and width must be multiples of 8 (two stride-2 stages and the
    half-resolution attention).
    """

    def __init__(self, ngf: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        if ngf < 2 or ngf % 2:
            raise ValueError(f"ngf must be an even integer >= 2, got {ngf!r}")
        self.ngf = ngf
        self.in_channels = in_channels
        self.coarse_generator = CoarseNetwork(in_channels, ngf)
        self.fine_generator = RefinementNetwork(in_channels, ngf)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Coarse and refined outputs for masked input.

        Parameters
        ----------
        x : torch.Tensor
            (N, C, H, W) in [-1, 1] with the hole already zeroed (``x * (1 - mask)``).
        mask : torch.Tensor
            (N or 1, 1, H, W), 1 inside the hole.

        Returns
        -------
        tuple of torch.Tensor
            ``(coarse, refined)``, both (N, C, H, W) in [-1, 1] (not composited).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if x.shape[2] % 8 or x.shape[3] % 8:
            raise ValueError(f"height and width must be multiples of 8, got {tuple(x.shape[2:])}")
        if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[2:] != x.shape[2:] \
                or mask.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"mask must be (N or 1, 1, H, W) matching x, got {tuple(mask.shape)}")
        mask = mask.to(x.dtype)
        coarse = self.coarse_generator(x, mask)
        refined = self.fine_generator(x, coarse, mask)
        return coarse, refined

    def dropout_layers(self) -> list[str]:
        """Names of all blocks that own a dropout layer (e.g. ``coarse_generator.conv3``)."""
        return [n for n, m in self.named_modules()
                if isinstance(m, ConvBlock) and m.dropout is not None]

    def active_dropout_layers(self) -> list[str]:
        """Names of the blocks whose dropout is currently on."""
        return [n for n, m in self.named_modules()
                if isinstance(m, ConvBlock) and m.drop_active]

    def set_dropout(self, layers: Iterable[str] | None, p: float = 0.5) -> None:
        """Switch dropout on for exactly ``layers`` (block names), off elsewhere.

        Parameters
        ----------
        layers : iterable of str or None
            Block names as in :meth:`dropout_layers`; ``None`` or empty = all off.
        p : float
            Channel drop probability, 0 <= p < 1.
        """
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p must be in [0, 1), got {p!r}")
        wanted = set(layers or ())
        available = set(self.dropout_layers())
        unknown = wanted - available
        if unknown:
            raise ValueError(
                f"unknown dropout layers {sorted(unknown)}; available: {sorted(available)}"
            )
        for name, module in self.named_modules():
            if isinstance(module, ConvBlock) and module.dropout is not None:
                module.set_dropout(name in wanted, p)


class Critic(nn.Module):
    """WGAN critic: four 5x5 stride-2 convolutions (LeakyReLU 0.2) and a linear head.

    Parameters
    ----------
    ndf : int
        Base width (official 32).
    input_size : int
        Side of the square input (official: 128 local, 256 global); a multiple of 16.
    in_channels : int
        Image channels.
    """

    def __init__(self, ndf: int = 32, input_size: int = 128, in_channels: int = 1) -> None:
        super().__init__()
        if input_size % 16:
            raise ValueError(f"critic input_size must be a multiple of 16, got {input_size}")
        self.ndf = ndf
        self.input_size = input_size
        self.dis_conv_module = nn.Module()
        self.dis_conv_module.conv1 = ConvBlock(in_channels, ndf, 5, 2, 2, activation="lrelu")
        self.dis_conv_module.conv2 = ConvBlock(ndf, 2 * ndf, 5, 2, 2, activation="lrelu")
        self.dis_conv_module.conv3 = ConvBlock(2 * ndf, 4 * ndf, 5, 2, 2, activation="lrelu")
        self.dis_conv_module.conv4 = ConvBlock(4 * ndf, 4 * ndf, 5, 2, 2, activation="lrelu")
        side = input_size // 16
        self.linear = nn.Linear(4 * ndf * side * side, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Convolution features before the linear head: (N, 4*ndf, S/16, S/16)."""
        if x.ndim != 4 or x.shape[2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"critic expects (N, C, {self.input_size}, {self.input_size}), got {tuple(x.shape)}"
            )
        m = self.dis_conv_module
        return m.conv4(m.conv3(m.conv2(m.conv1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Critic score, (N, 1)."""
        return self.linear(self.features(x).flatten(1))


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (trainable or frozen)."""
    return sum(p.numel() for p in module.parameters())


def he_normal_(module: nn.Module, *, bias_std: float = 0.1,
               generator: torch.Generator | None = None) -> nn.Module:
    """Re-draw all weights He-normal (std sqrt(2 / fan_in)) and biases N(0, ``bias_std``).

    PyTorch's default initialisation shrinks activations through the 17 layers of each
    stage, so an untrained network barely reacts to its input or to dropout; this keeps
    their scale (used for untrained bundles and tests). Returns ``module``.
    """
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, bias_std, generator=generator)
            else:
                p.normal_(0.0, (2.0 / p[0].numel()) ** 0.5, generator=generator)
    return module
