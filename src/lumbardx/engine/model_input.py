"""The detectors' three input channels, from a gray slice or a T1/T2 pair.

Every detector takes ``float32 [B, 3, H, W]`` in [0, 1]. A gray slice is repeated in the three
channels; a T1/T2 pair (:class:`lumbardx.data.pairs.SequencePairs`) gives T1, T2 and their
mean, so a single slice read as a pair of itself is the same input as the gray slice.
"""

from __future__ import annotations

import torch
from torch import Tensor


def three_channels(x: Tensor) -> Tensor:
    """``[B, 1, H, W]`` (gray) or ``[B, 2, H, W]`` (T1, T2) -> ``[B, 3, H, W]``, contiguous.

    Raises:
        ValueError: any other number of channels.
    """
    if x.ndim != 4 or x.shape[1] not in (1, 2):
        raise ValueError(f"expected images [B, 1, H, W] or [B, 2, H, W], got {tuple(x.shape)}")
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    return torch.cat([x, x.mean(1, keepdim=True)], 1)
