from __future__ import annotations

import pytest
import torch

from micro_doe.platform.diffusion.blocks import Attention, ResBlock, rename_state_keys, timestep_embedding
from micro_doe.platform.micro3diff.unet import UNet2D, UNetConfig


@pytest.mark.parametrize("dims", [2, 3])
def test_resblock_keeps_space_and_adds_the_embedding_per_channel(dims: int) -> None:
    torch.manual_seed(0)
    block = ResBlock(dims, 8, 16, emb_dim=12, groups=4, dropout=0.0).eval()
    x = torch.randn(2, 8, *(6,) * dims)
    emb = torch.randn(2, 12)
    y = block(x, emb)
    assert y.shape == (2, 16, *(6,) * dims)
    # the embedding enters as a per-channel constant before conv2: changing it changes the output
    assert not torch.allclose(y, block(x, emb + 1.0))


def test_resblock_rejects_other_dims() -> None:
    with pytest.raises(ValueError, match="dims"):
        ResBlock(1, 8, 8, emb_dim=4, groups=4, dropout=0.0)


@pytest.mark.parametrize("shape", [(3, 5), (2, 3, 4)])
def test_attention_is_equivariant_to_permuting_positions(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    attn = Attention(8, groups=4).eval()
    x = torch.randn(2, 8, *shape)
    perm = torch.randperm(x[0, 0].numel())
    flat = x.flatten(2)
    permuted = flat[..., perm].reshape(x.shape)
    out = attn(x).flatten(2)[..., perm]
    assert torch.allclose(attn(permuted).flatten(2), out, atol=1e-5)


def test_timestep_embedding_is_cos_then_sin() -> None:
    e = timestep_embedding(torch.tensor([0, 5]), 8)
    assert e.shape == (2, 8)
    assert torch.allclose(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))


def test_weights_saved_with_the_old_block_names_still_load() -> None:
    torch.manual_seed(0)
    model = UNet2D(UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4))
    state = model.state_dict()
    old = {k.replace(".emb.", ".time."): v.clone() for k, v in state.items()}
    assert any(".time." in k for k in old)
    fresh = UNet2D(UNetConfig(base_channels=8, channel_mults=(1, 2), groups=4))
    fresh.load_state_dict(old)
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in state.items())


def test_rename_state_keys_renames_in_place() -> None:
    state = {"a.time.w": 1, "b": 2}
    rename_state_keys(state, {".time.": ".emb."})
    assert state == {"a.emb.w": 1, "b": 2}


def test_a_3d_convolution_of_at_most_8_voxels_computes_in_fp32_under_autocast():
    from micro_doe.platform.diffusion.blocks import conv

    layer = conv(3, 4, 4, 3, padding=1)
    with torch.autocast("cpu", torch.bfloat16):
        assert layer(torch.randn(1, 4, 2, 2, 2)).dtype == torch.float32
        assert layer(torch.randn(1, 4, 4, 4, 4)).dtype == torch.bfloat16
    assert layer(torch.randn(1, 4, 2, 2, 2)).dtype == torch.float32
