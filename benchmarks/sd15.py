"""SD1.5-architecture models with random weights, built from ComfyUI's own SD15 config.

The real width (model_channels 320) makes one evaluation cost what a real SD1.5 UNet
costs; a narrow width keeps the ecosystem (latent format, EPS sigma space, 768-wide
context) at a fraction of the cost, for measurements that do not depend on the UNet.
"""
from __future__ import annotations

import torch


# Attention only at the two lowest resolutions: the cost of a narrow model then stays small
# at 4x128x128, where full-resolution self-attention would dominate it.
CHEAP = {"transformer_depth": [0, 0, 0, 0, 1, 1, 0, 0],
         "transformer_depth_output": [0, 0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0]}


def sd15_model(device: torch.device, model_channels: int = 320, seed: int = 0,
               **overrides):
    """ComfyUI's SD1.5 BaseModel (EPS), weights drawn from N(0, 0.02) with ``seed``;
    ``overrides`` replace entries of the UNet config (e.g. CHEAP)."""
    import comfy.model_base
    import comfy.supported_models
    config = dict(comfy.supported_models.SD15.unet_config, in_channels=4, out_channels=4,
                  model_channels=model_channels, num_res_blocks=[2, 2, 2, 2],
                  channel_mult=[1, 2, 4, 4], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                  transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
                  transformer_depth_middle=1, num_heads=8, context_dim=768,
                  use_linear_in_transformer=False,
                  adm_in_channels=None, use_temporal_attention=False, use_temporal_resblock=False,
                  num_head_channels=-1, image_size=32, legacy=False, use_spatial_transformer=True,
                  dtype=torch.float32)
    config.update(overrides)
    model = comfy.model_base.BaseModel(comfy.supported_models.SD15(config), device=device).eval()
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():  # ComfyUI's layers skip initialisation: give them finite weights
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
    return model


def sd15_patcher(device: torch.device, model_channels: int = 320, seed: int = 0,
                 **overrides):
    """The model as ComfyUI's MODEL (a ModelPatcher), loaded and offloaded on ``device``."""
    import comfy.model_patcher
    return comfy.model_patcher.ModelPatcher(sd15_model(device, model_channels, seed, **overrides),
                                            load_device=device, offload_device=device)
