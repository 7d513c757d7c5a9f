"""Is the analysed image a sagittal lumbar spine MRI at all? Explicit checks, so that junk is
refused with its reason instead of being reported as a study without findings.

1. **Uniform image**: one grey value (a black or blank export).
2. **Pixel noise**: neighbouring pixels unrelated. Roughness = mean absolute difference of
   horizontally and vertically adjacent pixels over twice the image's standard deviation
   (8-bit display image). Real slices of the dev set measure 0.06-0.14 (832 slices; 99th
   percentile 0.13); uniform noise about 1.15, 10% salt noise 0.6. Images above
   :data:`MAX_ROUGHNESS` (0.5) are refused.
3. **No disc found** on the slice by the detector (checked after detection). No real dev slice
   gives fewer than one disc (two give one); a photograph, logos and a gradient give none
   (``bench/junk_images.py``: 9 of 10 junk images refused, none of the 832 real slices).
   Smooth noise (random values blown up from 48 x 48) still passes: the detector finds one disc
   in it. A plausible spine geometry (several discs at regular spacing) would refuse it, but
   also the real slices with one or two discs found.
"""

from __future__ import annotations

import numpy as np

from lumbardx.clinical.findings import SpineFindings

MAX_ROUGHNESS = 0.5
PREFIX = "not a sagittal lumbar spine MRI: "
NO_DISC = (PREFIX + "no intervertebral disc was found on the analysed slice (a blank or noise "
           "image, a photograph, another body part or plane, or an image the detector cannot "
           "read)")


def roughness(display: np.ndarray) -> float:
    """Mean absolute difference of adjacent pixels over twice the standard deviation of
    ``display`` (``uint8 [H, W]``); ``inf`` for a uniform image."""
    a = np.asarray(display, np.float32)
    sd = float(a.std())
    if sd < 1e-6 or min(a.shape) < 2:
        return float("inf")
    return float((np.abs(np.diff(a, axis=1)).mean() + np.abs(np.diff(a, axis=0)).mean())
                 / (2.0 * sd))


def image_problem(display: np.ndarray) -> str | None:
    """Why ``display`` (``uint8 [H, W]``) cannot be a sagittal lumbar spine MRI, or ``None``."""
    a = np.asarray(display)
    if a.size == 0 or int(a.max()) == int(a.min()):
        return PREFIX + f"the image is uniform (every pixel {int(a.max()) if a.size else '-'})"
    r = roughness(a)
    if r > MAX_ROUGHNESS:
        return PREFIX + (f"the image is pixel noise (roughness {r:.2f}; MRI slices measure at "
                         f"most {MAX_ROUGHNESS})")
    return None


def spine_problem(spine: SpineFindings) -> str | None:
    """Why the discs found do not make a spine, or ``None`` (today: none found at all)."""
    return None if spine.discs else NO_DISC
