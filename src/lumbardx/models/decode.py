"""YOLOv5 box decoding and NMS post-processing.

Decoding follows ultralytics/yolov5 v7.0 ``models/yolo.py`` ``Detect.forward``:
``xy = (2 * sigmoid(t_xy) - 0.5 + grid) * stride`` and ``wh = (2 * sigmoid(t_wh))^2 * anchor``
(anchor in input pixels), objectness and class scores through a sigmoid. NMS follows v7.0
``utils/general.py`` ``non_max_suppression`` (score = objectness x class probability; optional
multi-label; class-aware by default) on ``torchvision.ops.batched_nms``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert, clip_boxes_to_image

from lumbardx.models.yolo_head import DEFAULT_STRIDES, AnchorSet, anchors_tensor


def make_grid(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Cell top-left corners in grid units: ``float32 [H, W, 2]`` with ``[..., 0] = x (column)``
    and ``[..., 1] = y (row)``."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=torch.float32),
        torch.arange(width, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack((xs, ys), dim=-1)


def decode_level(raw: Tensor, anchors: Tensor, stride: float) -> Tensor:
    """Decode one level.

    Args:
        raw: ``[B, na, H, W, 5 + nc]`` head logits (x, y, w, h, obj, classes).
        anchors: ``[na, 2]`` anchor ``w, h`` in input pixels.
        stride: the level's stride in input pixels.

    Returns:
        ``[B, na, H, W, 5 + nc]``: ``cx, cy, w, h`` in input pixels, then objectness and class
        probabilities in [0, 1].
    """
    _, na, h, w, _ = raw.shape
    y = raw.float().sigmoid()
    grid = make_grid(h, w, raw.device)  # [H, W, 2]
    xy = (y[..., 0:2] * 2 - 0.5 + grid) * stride  # [B, na, H, W, 2]
    wh = (y[..., 2:4] * 2) ** 2 * anchors.to(raw.device).float().view(1, na, 1, 1, 2)
    return torch.cat((xy, wh, y[..., 4:]), dim=-1)


def decode_yolov5(raw: Sequence[Tensor], anchors: Tensor, strides: Sequence[float]) -> Tensor:
    """Decode all levels and flatten: list of ``[B, na, H_i, W_i, 5 + nc]`` ->
    ``[B, N, 5 + nc]`` (``N = sum na * H_i * W_i``), boxes ``cx, cy, w, h`` in input pixels.

    ``anchors`` is ``[nl, na, 2]`` in input pixels.
    """
    out = [
        decode_level(p, anchors[i], strides[i]).reshape(p.shape[0], -1, p.shape[-1])
        for i, p in enumerate(raw)
    ]
    return torch.cat(out, dim=1)


def non_max_suppression(
    pred: Tensor,
    conf_thresh: float = 0.25,
    iou_thresh: float = 0.45,
    max_det: int = 300,
    multi_label: bool = False,
    agnostic: bool = False,
    max_nms: int = 30000,
    image_size: tuple[int, int] | None = None,
    box_format: Literal["cxcywh", "xyxy"] = "cxcywh",
) -> list[dict[str, Tensor]]:
    """Per-image NMS on decoded predictions.

    Args:
        pred: ``[B, N, 5 + nc]``: boxes in input pixels (``box_format``), objectness, class
            probabilities; :func:`decode_yolov5` gives ``cxcywh`` boxes, an ONNX export
            (:mod:`lumbardx.models.export`) ``xyxy`` boxes.
        conf_thresh: minimum objectness, and minimum ``obj x class`` score kept.
        iou_thresh: NMS IoU threshold.
        max_det: maximum detections kept per image.
        multi_label: keep every class whose score passes ``conf_thresh`` (one box may then
            carry several labels), instead of only the best class.
        agnostic: suppress across classes.
        max_nms: maximum boxes entering NMS (highest scores first).
        image_size: ``(H, W)``; when given, final boxes are clipped to the image.
        box_format: ``"cxcywh"`` (centre, width, height) or ``"xyxy"`` (corners) for
            ``pred[..., :4]``.

    Returns:
        One dict per image: ``boxes`` ``float32 [K, 4]`` xyxy input pixels, ``scores`` ``[K]``,
        ``labels`` ``int64 [K]``, sorted by descending score.
    """
    if box_format not in ("cxcywh", "xyxy"):
        raise ValueError(f"unknown box_format {box_format!r}: use 'cxcywh' or 'xyxy'")
    nc = pred.shape[-1] - 5
    multi_label = multi_label and nc > 1
    results: list[dict[str, Tensor]] = []
    for x in pred:
        x = x[x[:, 4] > conf_thresh]  # candidates by objectness
        scores_all = x[:, 5:] * x[:, 4:5]  # [n, nc] obj x cls
        boxes = x[:, :4] if box_format == "xyxy" else box_convert(x[:, :4], "cxcywh", "xyxy")
        if multi_label:
            i, j = (scores_all > conf_thresh).nonzero(as_tuple=True)
            boxes, scores, labels = boxes[i], scores_all[i, j], j
        else:
            scores, labels = scores_all.max(dim=1)
            keep = scores > conf_thresh
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        order = scores.argsort(descending=True)[:max_nms]
        boxes, scores, labels = boxes[order], scores[order], labels[order]
        groups = torch.zeros_like(labels) if agnostic else labels
        keep = batched_nms(boxes, scores, groups, iou_thresh)
        keep = keep[:max_det]
        boxes = boxes[keep]
        if image_size is not None:
            boxes = clip_boxes_to_image(boxes, image_size)
        results.append(
            {"boxes": boxes.float(), "scores": scores[keep].float(), "labels": labels[keep].long()}
        )
    return results


class YOLOv5PostProcess(nn.Module):
    """Decode + NMS for YOLOv5 raw outputs.

    Defaults are v7.0 ``val.py`` (conf 0.001, IoU 0.6, max_det 300, multi-label); for
    reading single images ``detect.py`` uses conf 0.25, IoU 0.45, single label.

    Call: ``postprocess(raw, image_size)`` -> list (one per image) of dicts ``boxes``
    (xyxy input pixels, clipped to the image), ``scores``, ``labels``.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: AnchorSet | Tensor | None = None,
        strides: Sequence[int] = DEFAULT_STRIDES,
        conf_thresh: float = 0.001,
        iou_thresh: float = 0.6,
        max_det: int = 300,
        multi_label: bool = True,
        agnostic: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.register_buffer("anchors", anchors_tensor(anchors))  # [nl, na, 2] input pixels
        self.strides = tuple(int(s) for s in strides)
        self.conf_thresh = conf_thresh
        self.iou_thresh = iou_thresh
        self.max_det = max_det
        self.multi_label = multi_label
        self.agnostic = agnostic

    @torch.no_grad()
    def forward(self, raw: list[Tensor], image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Boxes per image (see class docstring)."""
        pred = decode_yolov5(raw, self.anchors, self.strides)
        return non_max_suppression(
            pred,
            self.conf_thresh,
            self.iou_thresh,
            self.max_det,
            self.multi_label,
            self.agnostic,
            image_size=image_size,
        )
