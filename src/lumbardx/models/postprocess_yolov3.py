"""YOLOv3 / PP-YOLOv2 post-processing: grid-sensitive decoding, scores, hard or Matrix NMS.

Decoding follows Paddle's ``yolo_box`` operator (``YOLOBox`` in PaddleDetection
``ppdet/modeling/layers.py``; ``ppdet/modeling/bbox_utils.py`` ``decode_yolo``). For a raw
prediction ``(x, y, w, h)`` of anchor ``(a_w, a_h)`` in cell ``(g_x, g_y)`` of a level with stride
``s`` (= image width / grid width):

* ``c_x = (scale_x_y * sigmoid(x) - 0.5 * (scale_x_y - 1) + g_x) * s`` (same for ``y``): with
  PP-YOLOv2's ``scale_x_y = 1.05`` the centre reaches 0.025 cell beyond the cell edges
  ("grid sensitive"), so ``x = (1.05 * sigmoid - 0.025 + g_x) * s``;
* ``w = exp(w) * a_w``, ``h = exp(h) * a_h`` (pixels);
* confidence ``sigmoid(obj)``, or with the IoU-aware branch
  ``sigmoid(obj)**(1 - f) * sigmoid(iou)**f`` (``iou_aware_factor`` ``f`` = 0.5 in
  ``ppyolov2_r50vd_dcn.yml``; ``yolo_head.py``); boxes with confidence below ``conf_thresh`` get
  score 0;
* class scores ``confidence * sigmoid(cls)``; boxes clipped to the image (``clip_bbox: true``;
  to ``[0, W] x [0, H]`` in lumbardx's continuous convention, Paddle clips to ``W - 1``).

Every (box, class) pair scoring above ``conf_thresh`` is a candidate (multi-label, as in the
reference). NMS: ``"hard"`` = ``torchvision.ops.batched_nms`` per class (YOLOv3's
``MultiClassNMS``: IoU 0.45, ``nms_top_k`` per class, ``keep_top_k`` 100) or ``"matrix"`` =
:func:`lumbardx.models.matrix_nms.matrix_nms` (PP-YOLOv2, linear kernel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from lumbardx.models.matrix_nms import Kernel, matrix_nms, top_k_per_class

NMSKind = Literal["hard", "matrix"]


def grid_sensitive_xy(logit: Tensor, scale_x_y: float) -> Tensor:
    """Cell offset ``scale * sigmoid(logit) - 0.5 * (scale - 1)``, in cells (any shape)."""
    return scale_x_y * torch.sigmoid(logit) - 0.5 * (scale_x_y - 1.0)


def decode_boxes(
    raw: Tensor, anchors: Tensor, image_size: tuple[int, int], scale_x_y: float = 1.0
) -> Tensor:
    """Decode one level's raw boxes to ``xyxy`` input pixels.

    Args:
        raw: ``[B, A, H, W, >=4]`` raw predictions (channels ``x, y, w, h`` first).
        anchors: ``[A, 2]`` anchor (width, height) in pixels.
        image_size: input ``(height, width)`` in pixels.
        scale_x_y: grid-sensitive factor (1.0 = plain YOLOv3, 1.05 = PP-YOLOv2).

    Returns:
        ``[B, A, H, W, 4]`` boxes ``x1, y1, x2, y2`` in input pixels (not clipped).
    """
    _, num_a, grid_h, grid_w, _ = raw.shape
    stride_y, stride_x = image_size[0] / grid_h, image_size[1] / grid_w
    gy, gx = torch.meshgrid(
        torch.arange(grid_h, device=raw.device, dtype=raw.dtype),
        torch.arange(grid_w, device=raw.device, dtype=raw.dtype),
        indexing="ij",
    )  # [H, W]
    cx = (grid_sensitive_xy(raw[..., 0], scale_x_y) + gx) * stride_x  # [B, A, H, W]
    cy = (grid_sensitive_xy(raw[..., 1], scale_x_y) + gy) * stride_y
    anchors = anchors.to(raw).reshape(1, num_a, 1, 1, 2)
    w = torch.exp(raw[..., 2]) * anchors[..., 0]
    h = torch.exp(raw[..., 3]) * anchors[..., 1]
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def confidence(raw: Tensor, num_classes: int, iou_aware: bool, iou_aware_factor: float) -> Tensor:
    """Objectness ``[...]`` from raw ``[..., K]``: ``sigmoid(obj)``, IoU-aware when asked."""
    obj = torch.sigmoid(raw[..., 4])
    if not iou_aware:
        return obj
    iou = torch.sigmoid(raw[..., 5 + num_classes])
    return obj.pow(1.0 - iou_aware_factor) * iou.pow(iou_aware_factor)


class YOLOv3PostProcess(nn.Module):
    """Raw YOLOv3-style predictions -> final boxes per image.

    Args:
        num_classes: ``nc``.
        anchors: ``[9, 2]`` anchor (width, height) in pixels, small to large; ``None`` builds
            a selection-only post-process (:meth:`select` works, :meth:`decode` refuses), as
            :meth:`from_settings` does for decoded ONNX Runtime outputs.
        anchor_masks: anchor indices per level, levels ordered stride 8, 16, 32.
        strides: level strides (only checked against the maps; decoding uses map sizes).
        scale_x_y: grid-sensitive factor (1.05 for PP-YOLOv2, ``ppyolov2_r50vd_dcn.yml``).
        iou_aware: raw maps carry a trailing IoU logit (``K = 6 + nc``).
        iou_aware_factor: exponent of the IoU prediction in the confidence.
        nms: ``"hard"`` or ``"matrix"``.
        conf_thresh: candidates need confidence ``>= conf_thresh`` and class score
            ``> conf_thresh``; also Matrix NMS's ``post_threshold`` (0.01 in both configs).
        nms_iou: IoU threshold of hard NMS (0.45, ``yolov3_darknet53.yml``).
        max_det: boxes kept per image (``keep_top_k`` 100).
        nms_top_k: candidates per class entering NMS; ``<= 0`` keeps all.
        matrix_kernel: Matrix NMS kernel (``"linear"`` in PP-YOLOv2).
        matrix_sigma: Gaussian kernel parameter.
    """

    def __init__(
        self,
        num_classes: int,
        anchors: Tensor | Sequence[Sequence[float]] | None,
        anchor_masks: Sequence[Sequence[int]] = ((0, 1, 2), (3, 4, 5), (6, 7, 8)),
        strides: Sequence[int] = (8, 16, 32),
        scale_x_y: float = 1.0,
        iou_aware: bool = False,
        iou_aware_factor: float = 0.5,
        nms: NMSKind = "hard",
        conf_thresh: float = 0.01,
        nms_iou: float = 0.45,
        max_det: int = 100,
        nms_top_k: int = 1000,
        matrix_kernel: Kernel = "linear",
        matrix_sigma: float = 2.0,
    ) -> None:
        super().__init__()
        if nms not in ("hard", "matrix"):
            raise ValueError(f"unknown NMS {nms!r}: use 'hard' or 'matrix'")
        if len(anchor_masks) != len(strides):
            raise ValueError("anchor_masks and strides must have the same length")
        self.num_classes = num_classes
        anchor_wh = (
            None if anchors is None
            else torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)  # [9, 2] px
        )
        self.anchors: Tensor | None
        self.register_buffer("anchors", anchor_wh, persistent=False)
        self.anchor_masks = [list(m) for m in anchor_masks]
        self.strides = list(strides)
        self.scale_x_y = scale_x_y
        self.iou_aware = iou_aware
        self.iou_aware_factor = iou_aware_factor
        self.nms = nms
        self.conf_thresh = conf_thresh
        self.nms_iou = nms_iou
        self.max_det = max_det
        self.nms_top_k = nms_top_k
        self.matrix_kernel: Kernel = matrix_kernel
        self.matrix_sigma = matrix_sigma

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> YOLOv3PostProcess:
        """A selection-only post-process (no anchors) from its NMS settings.

        ``settings`` is :func:`lumbardx.models.export.postprocess_settings` of a
        ``YOLOv3PostProcess`` (as stored in an ONNX export): ``num_classes``, ``conf_thresh``,
        ``nms``, ``nms_iou``, ``max_det``, ``nms_top_k``, ``matrix_kernel``, ``matrix_sigma``
        (``kind``, when present, must be ``"yolov3"``).
        """
        if settings.get("kind", "yolov3") != "yolov3":
            raise ValueError(f"not YOLOv3 post-process settings: kind {settings['kind']!r}")
        keys = ("conf_thresh", "nms", "nms_iou", "max_det", "nms_top_k", "matrix_kernel",
                "matrix_sigma")
        missing = [k for k in ("num_classes", *keys) if k not in settings]
        if missing:
            raise ValueError(f"YOLOv3 post-process settings lack {', '.join(missing)}")
        return cls(int(settings["num_classes"]), None, **{k: settings[k] for k in keys})

    def decode(self, raw: list[Tensor], image_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """All levels -> ``boxes [B, N, 4]`` (xyxy pixels, clipped) and ``scores [B, N, nc]``."""
        if self.anchors is None:
            raise ValueError("this post-process has no anchors (selection only): it cannot decode")
        expected_k = 5 + self.num_classes + (1 if self.iou_aware else 0)
        if len(raw) != len(self.anchor_masks):
            raise ValueError(f"expected {len(self.anchor_masks)} levels, got {len(raw)}")
        all_boxes, all_scores = [], []
        for level, (r, mask) in enumerate(zip(raw, self.anchor_masks)):
            if r.ndim != 5 or r.shape[-1] != expected_k or r.shape[1] != len(mask):
                raise ValueError(
                    f"level {level}: raw predictions must be [B, {len(mask)}, H, W, {expected_k}], "
                    f"got {list(r.shape)}"
                )
            r = r.float()
            boxes = decode_boxes(r, self.anchors[mask], image_size, self.scale_x_y)
            conf = confidence(r, self.num_classes, self.iou_aware, self.iou_aware_factor)
            conf = torch.where(conf >= self.conf_thresh, conf, torch.zeros_like(conf))
            scores = conf.unsqueeze(-1) * torch.sigmoid(r[..., 5 : 5 + self.num_classes])
            b = r.shape[0]
            all_boxes.append(boxes.reshape(b, -1, 4))
            all_scores.append(scores.reshape(b, -1, self.num_classes))
        boxes = torch.cat(all_boxes, dim=1)  # [B, N, 4]
        h, w = image_size
        boxes[..., 0::2] = boxes[..., 0::2].clamp(0, w)
        boxes[..., 1::2] = boxes[..., 1::2].clamp(0, h)
        return boxes, torch.cat(all_scores, dim=1)

    @torch.no_grad()
    def select(self, boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """Final detections of one image from its decoded candidates.

        Every (box, class) pair with score ``> conf_thresh`` is a candidate (multi-label); then
        hard NMS per class (``nms_top_k`` per class, IoU ``nms_iou``, at most ``max_det``) or
        Matrix NMS (``matrix_kernel`` / ``matrix_sigma``, ``post_threshold = conf_thresh``).

        Args:
            boxes: ``[N, 4]`` ``x1, y1, x2, y2`` input pixels (as :meth:`decode` gives them).
            scores: ``[N, nc]`` class scores ``confidence x class probability`` in [0, 1].

        Returns:
            ``boxes`` ``float32 [D, 4]`` (xyxy pixels), ``scores`` ``float32 [D]`` (descending),
            ``labels`` ``int64 [D]``.
        """
        n_boxes = boxes.shape[0] if boxes.ndim == 2 else -1
        if boxes.ndim != 2 or boxes.shape[1] != 4 or tuple(scores.shape) != (
            n_boxes, self.num_classes
        ):
            raise ValueError(
                f"select expects boxes [N, 4] and scores [N, {self.num_classes}], got "
                f"{list(boxes.shape)} and {list(scores.shape)}"
            )
        n, c = (scores > self.conf_thresh).nonzero(as_tuple=True)  # multi-label pairs
        cand_boxes, cand_scores, cand_labels = boxes[n], scores[n, c], c
        if self.nms == "matrix":
            out_boxes, out_scores, out_labels = matrix_nms(
                cand_boxes,
                cand_scores,
                cand_labels,
                kernel=self.matrix_kernel,
                sigma=self.matrix_sigma,
                post_threshold=self.conf_thresh,
                top_k=self.nms_top_k,
                keep_top_k=self.max_det,
            )
        else:
            top = top_k_per_class(cand_scores, cand_labels, self.nms_top_k)
            keep = top[batched_nms(cand_boxes[top], cand_scores[top], cand_labels[top],
                                   self.nms_iou)]
            if self.max_det > 0:
                keep = keep[: self.max_det]
            out_boxes, out_scores, out_labels = (
                cand_boxes[keep], cand_scores[keep], cand_labels[keep]
            )
        return {
            "boxes": out_boxes.float(),
            "scores": out_scores.float(),
            "labels": out_labels.long(),
        }

    @torch.no_grad()
    def forward(self, raw: list[Tensor], image_size: tuple[int, int]) -> list[dict[str, Tensor]]:
        """Raw ``[B, A, H, W, K]`` per level -> per image ``boxes`` ``[D, 4]``, ``scores``,
        ``labels`` ``[D]`` (:meth:`decode`, then :meth:`select` per image)."""
        boxes, scores = self.decode(raw, image_size)
        return [self.select(b, s) for b, s in zip(boxes, scores)]
