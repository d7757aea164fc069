"""A tiny random diffusers UNet, for offline interop and equivalence tests."""

import torch


def tiny_unet(diffusers, channels: int = 1, size: int = 8):
    """A two-level ``UNet2DModel`` with attention, seeded so every test sees the same weights."""
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
        block_out_channels=(8, 16), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
    ).eval()
