"""Extra augmentations for the v4 recipe: what phones and memes do to a face, on batches of aligned grey faces
``(N, 1, S, S)`` float pixels 0..255, after :func:`training.train.augment` (mirror, geometry, down-up, blur,
gamma/contrast/brightness, noise). Every draw comes from the given ``torch.Generator`` (seeded runs repeat).

- :func:`occlude`: partial occlusion (a hand, a caption, sunglasses): one rectangle of 15-40 % of each side
  filled with a flat grey level;
- :func:`low_light`: a dark phone photo brought back up: intensities x0.15-0.4, quantised to whole levels,
  sensor noise, then gained back (the network standardises each face, so the loss of levels and the noise
  are what remain);
- :func:`blockiness`: JPEG-like 8x8 (at 48 px: 4x4) block artefacts: each block's detail shrunk towards its mean.

Colour and white balance do not reach the grey 48x48 network (BT.601 grey cancels most of a white-balance
shift after the per-face standardisation); they matter for a colour input (not in this recipe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rand(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=g)


def occlude(x: torch.Tensor, g: torch.Generator, p: float = 0.2) -> torch.Tensor:
    """A flat rectangle (15-40 % of each side, anywhere, grey level 0-255) over a share ``p`` of the faces."""
    n, _, h, w = x.shape
    on = _rand(g, n) < p
    rh, rw = (0.15 + 0.25 * _rand(g, n)) * h, (0.15 + 0.25 * _rand(g, n)) * w
    y0, x0 = _rand(g, n) * (h - rh), _rand(g, n) * (w - rw)
    level = _rand(g, n) * 255
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = (ys >= y0.view(n, 1, 1)) & (ys < (y0 + rh).view(n, 1, 1))
    inside = inside & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + rw).view(n, 1, 1))
    mask = (inside & on.view(n, 1, 1)).unsqueeze(1)
    return torch.where(mask, level.view(n, 1, 1, 1).expand_as(x), x)


def low_light(x: torch.Tensor, g: torch.Generator, p: float = 0.15) -> torch.Tensor:
    """Dim (x0.15-0.4), quantise to whole levels, add noise (sigma 1-3 levels), gain back; share ``p``."""
    n = x.shape[0]
    on = (_rand(g, n) < p).view(n, 1, 1, 1)
    k = (0.15 + 0.25 * _rand(g, n)).view(n, 1, 1, 1)
    sigma = (1 + 2 * _rand(g, n)).view(n, 1, 1, 1)
    dark = torch.round(x * k) + torch.randn(x.shape, generator=g) * sigma
    return torch.where(on, (dark.clamp(0, 255) / k).clamp(0, 255), x)


def blockiness(x: torch.Tensor, g: torch.Generator, p: float = 0.15, block: int = 4) -> torch.Tensor:
    """Each ``block`` x ``block`` tile's detail scaled by 0.2-0.6 towards its mean (JPEG's lost high
    frequencies, block by block); share ``p``. Needs S divisible by ``block``."""
    n = x.shape[0]
    on = (_rand(g, n) < p).view(n, 1, 1, 1)
    keep = (0.2 + 0.4 * _rand(g, n)).view(n, 1, 1, 1)
    mean = F.interpolate(F.avg_pool2d(x, block), scale_factor=block, mode="nearest")
    return torch.where(on, mean + (x - mean) * keep, x)


def phone_and_meme(
    x: torch.Tensor, g: torch.Generator, p_occlude: float = 0.2, p_low_light: float = 0.15, p_block: float = 0.15
) -> torch.Tensor:
    """:func:`occlude`, :func:`low_light`, :func:`blockiness` in turn, rounded to whole pixels (as at run time)."""
    x = blockiness(low_light(occlude(x, g, p_occlude), g, p_low_light), g, p_block)
    return torch.round(x.clamp(0, 255))
