"""Stage ``detect``: the slice letterboxed to the model's input, the network, boxes back in
image pixels.

``preprocess``: the 8-bit display image (``uint8 [H, W]``) letterboxed to the model's square
input (:func:`lumbardx.engine.letterbox.letterbox_planes`, pad 0 as in evaluation), gray
repeated to ``float32 [1, 3, S, S]`` in [0, 1]; a T1/T2 pair gives the channels T1, T2 and
their mean (:func:`lumbardx.engine.model_input.three_channels`). ``detect``: the backend
(PyTorch in inference mode or ONNX Runtime), boxes mapped back from input pixels to image pixels
(``Letterbox.unmap_boxes``; xyxy, 0-based continuous).
"""

from __future__ import annotations

import numpy as np
import torch

from lumbardx.data.boxes import Box
from lumbardx.engine.letterbox import Letterbox, letterbox_planes
from lumbardx.engine.model_input import three_channels
from lumbardx.models.pretrained import LoadedModel

#: Letterbox padding value, as in evaluation (``lumbardx.engine.evaluate.predict``).
PAD_VALUE = 0


def preprocess(m: LoadedModel, display: np.ndarray,
               pair: tuple[np.ndarray, np.ndarray] | None = None
               ) -> tuple[torch.Tensor, Letterbox]:
    """``[1, 3, S, S]`` in [0, 1] of ``display``, or of ``pair`` (T1, T2 displays of the same
    size) when given, at the input size of ``m``; and the letterbox geometry."""
    image = display if pair is None else np.stack(pair)
    lb, geo = letterbox_planes(image, m.image_size, PAD_VALUE)
    x = torch.from_numpy(lb)[None].float().div_(255.0)
    return three_channels(x), geo  # [1, C, S, S] -> [1, 3, S, S]


def detect(m: LoadedModel, x: torch.Tensor, geo: Letterbox) -> list[Box]:
    """Boxes of ``m`` on the preprocessed input, in image pixels, with scores and class
    names; boxes that lie wholly in the letterbox padding are dropped."""
    det = m.backend(x)[0]
    boxes = geo.unmap_boxes(det["boxes"].float().numpy())  # [K, 4] image pixels
    names = m.class_names
    out = []
    for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), det["scores"].tolist(),
                                              det["labels"].tolist()):
        if x2 > x1 and y2 > y1:  # boxes entirely in the padding collapse when clipped
            out.append(Box(names[int(label)], x1, y1, x2, y2, score=float(score)))
    return out


def warmup(m: LoadedModel) -> None:
    """Run ``m`` once on a blank image (one-time library start-up costs off the clock)."""
    blank = np.zeros((m.image_size, m.image_size), np.uint8)
    with torch.inference_mode():
        detect(m, *preprocess(m, blank))
