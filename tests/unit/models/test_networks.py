"""Tests for models.networks: official layout, shapes, dropout placement, attention."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from models.networks import (OFFICIAL_COARSE_DROPOUT_LAYERS, CompletionNetwork,
                             ContextualAttention, ConvBlock, Critic, count_parameters,
                             he_normal_)

LAYOUT_NAME = "picard_official_state_dict_layout.json"
OFFICIAL_REPO = Path("/work/.mirror/mazurowski-lab+picard/repo")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _layout() -> dict:
    for parent in Path(__file__).resolve().parents:
        path = parent / "shared" / "reference" / LAYOUT_NAME
        if path.is_file():
            return json.loads(path.read_text())
    pytest.skip(f"{LAYOUT_NAME} not found under any parent's shared/reference/ "
                "(it lives in ../shared/reference beside the repository)")


def _shapes(module: torch.nn.Module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def _masked(n: int, size: int, hole: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 1, size, size) * 2 - 1
    mask = torch.zeros(1, 1, size, size)
    a = (size - hole) // 2
    mask[..., a:a + hole, a:a + hole] = 1
    return x * (1 - mask), mask


def test_generator_state_dict_matches_official_layout():
    layout = _layout()
    gen = CompletionNetwork(ngf=32)
    assert _shapes(gen) == layout["gen"]
    expected = sum(torch.Size(s).numel() for s in layout["gen"].values())
    assert count_parameters(gen) == expected


def test_critic_state_dicts_match_official_layout():
    layout = _layout()
    assert _shapes(Critic(32, 128)) == layout["dis"]["localD"]
    assert _shapes(Critic(32, 256)) == layout["dis"]["globalD"]


def test_generator_shapes_range_and_finite():
    torch.manual_seed(0)
    gen = CompletionNetwork(ngf=4).eval()
    x, mask = _masked(2, 32, 16)
    coarse, refined = gen(x, mask)
    assert coarse.shape == refined.shape == (2, 1, 32, 32)
    assert torch.isfinite(refined).all()
    assert refined.abs().max() <= 1.0


@pytest.mark.parametrize("bad", [(1, 1, 30, 32), (1, 2, 32, 32)])
def test_generator_rejects_bad_input(bad):
    gen = CompletionNetwork(ngf=4)
    with pytest.raises(ValueError, match="multiples of 8|must be"):
        gen(torch.zeros(bad), torch.zeros(1, 1, *bad[2:]))


def test_odd_ngf_rejected():
    with pytest.raises(ValueError, match="ngf must be an even integer"):
        CompletionNetwork(ngf=5)


def test_dropout_blocks_follow_official_placement():
    gen = CompletionNetwork(ngf=4)
    names = gen.dropout_layers()
    # first and last convolution of each stage never drop; pmconv1 does
    for absent in ("coarse_generator.conv1", "coarse_generator.conv17",
                   "fine_generator.conv1", "fine_generator.allconv17"):
        assert absent not in names
    assert "fine_generator.pmconv1" in names
    assert set(OFFICIAL_COARSE_DROPOUT_LAYERS) <= set(names)
    assert len(names) == 38


def test_dropout_off_is_deterministic_and_on_is_not():
    torch.manual_seed(0)
    gen = he_normal_(CompletionNetwork(ngf=4)).eval()
    x, mask = _masked(2, 32, 16)
    gen.set_dropout(None)
    assert torch.equal(gen(x, mask)[1], gen(x, mask)[1])
    gen.set_dropout(OFFICIAL_COARSE_DROPOUT_LAYERS, 0.5)
    assert (gen(x, mask)[1] - gen(x, mask)[1]).abs().max() > 0.05


def test_only_configured_layers_drop():
    torch.manual_seed(0)
    gen = CompletionNetwork(ngf=8).eval()
    chosen = ["coarse_generator.conv5", "fine_generator.pmconv3"]
    gen.set_dropout(chosen, p=0.5)
    assert gen.active_dropout_layers() == chosen
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: seen.__setitem__(n, (inp[0], out)))
             for n, m in gen.named_modules() if isinstance(m, ConvBlock)]
    x, mask = _masked(2, 32, 16)
    with torch.no_grad():
        gen(x, mask)
    for h in hooks:
        h.remove()
    for name, (inp, out) in seen.items():
        block = gen.get_submodule(name)
        clean = block.activation(block.conv(inp))
        if name in chosen:
            zeroed = out.abs().flatten(2).amax(dim=2) == 0  # whole channels dropped
            kept = ~zeroed
            assert zeroed.any() and kept.any(), name
            torch.testing.assert_close(out.transpose(0, 1)[kept.T], 2 * clean.transpose(0, 1)[kept.T])
        else:
            torch.testing.assert_close(out, clean, msg=name)


def test_set_dropout_validates():
    gen = CompletionNetwork(ngf=4)
    with pytest.raises(ValueError, match="unknown dropout layers"):
        gen.set_dropout(["coarse_generator.conv1"])
    with pytest.raises(ValueError, match=r"dropout p must be in \[0, 1\)"):
        gen.set_dropout(OFFICIAL_COARSE_DROPOUT_LAYERS, p=1.0)


def test_contextual_attention_ignores_background_inside_hole():
    # without score fusion, patches touching the hole get zero attention; (fusion mixes
    # neighbouring scores before masking, in the reference as here, so it leaks a little)
    torch.manual_seed(0)
    att = ContextualAttention(fuse=False)
    f = torch.randn(2, 8, 16, 16)  # features of a 64x64 window
    b = torch.randn(2, 8, 16, 16)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1  # hole = feature pixels 4..12
    out = att(f, b, mask)
    assert out.shape == f.shape and torch.isfinite(out).all()
    b2 = b.clone()
    b2[..., 4:12, 4:12] = torch.randn(2, 8, 8, 8) * 10
    torch.testing.assert_close(att(f, b2, mask), out, rtol=0, atol=0)
    b3 = b.clone()
    b3[..., 0:2, 0:2] += 5.0  # outside the hole: used for pasting
    assert not torch.allclose(att(f, b3, mask), out)


def test_contextual_attention_chunking_is_exact():
    torch.manual_seed(1)
    f = torch.randn(5, 4, 8, 8)
    mask = torch.zeros(5, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    a = ContextualAttention(chunk=2)(f, f, mask)
    b = ContextualAttention(chunk=16)(f, f, mask)
    torch.testing.assert_close(a, b)


def test_critic_features_and_score_shapes():
    critic = Critic(ndf=4, input_size=32)
    x = torch.randn(3, 1, 32, 32)
    assert critic.features(x).shape == (3, 16, 2, 2)
    assert critic(x).shape == (3, 1)
    with pytest.raises(ValueError, match="critic expects"):
        critic.features(torch.randn(1, 1, 16, 16))


@pytest.mark.skipif(not OFFICIAL_REPO.exists(), reason="official PICARD mirror not present")
def test_parity_with_official_code(tmp_path, monkeypatch):
    """Run the official networks (extracted to tmp, never into the repo) on the same weights."""
    for rel, dest in (("inpainter/model/networks.py", "model/networks.py"),
                      ("inpainter/inpainterutils/tools.py", "inpainterutils/tools.py")):
        text = subprocess.run(["git", "-C", str(OFFICIAL_REPO), "show", f"HEAD:{rel}"],
                              check=True, capture_output=True, text=True).stdout
        (tmp_path / dest).parent.mkdir(exist_ok=True)
        (tmp_path / dest).write_text(text)
        (tmp_path / dest).with_name("__init__.py").touch()
    # the official files import plotting/LPIPS/torchvision helpers the networks never use
    for name in ("lpips", "matplotlib", "matplotlib.pyplot", "torchvision", "torchvision.utils",
                 "torchvision.transforms"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["lpips"].LPIPS = object
    sys.modules["torchvision"].utils = sys.modules["torchvision.utils"]
    sys.modules["torchvision.utils"].save_image = lambda *a, **k: None
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        from model import networks as off
        torch.manual_seed(0)
        cfg = {"input_dim": 1, "ngf": 4, "droprate": None, "dropout_type": "2D",
               "dropout_which": "CUSTOM"}
        og = off.Generator(cfg, False, None).eval()
        with torch.no_grad():
            for name, p in og.named_parameters():
                p.normal_(0, 0.1 if name.endswith("bias") else (2.0 / p[0].numel()) ** 0.5)
        mine = CompletionNetwork(4).eval()
        mine.load_state_dict(og.state_dict())
        x, mask = _masked(2, 64, 32)
        mask = mask.expand(2, -1, -1, -1).contiguous()
        with torch.no_grad():
            s1, s2, _ = og(x, mask)
            c1, c2 = mine(x, mask)
        assert (s1 - c1).abs().max() < 1e-4
        assert (s2 - c2).abs().max() < 1e-4
        od = off.LocalDis({"input_dim": 1, "ndf": 4}, False, None).eval()
        md = Critic(4, 128).eval()
        md.load_state_dict(od.state_dict())
        z = torch.randn(2, 1, 128, 128)
        with torch.no_grad():
            assert (od.dis_conv_module(z) - md.features(z)).abs().max() < 1e-4
    finally:
        for key in [k for k in sys.modules if k.split(".")[0] in ("model", "inpainterutils")]:
            del sys.modules[key]
