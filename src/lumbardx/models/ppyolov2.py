"""PP-YOLOv2 configurations and builders (``ppyolov2``, ``ppyolov2-r101``, ``ppyolov2-r18``).

PP-YOLOv2 (Huang et al., 2021) = ResNet-vd backbone (DCNv2 in res5) -> PP-YOLO PAN neck ->
YOLOv3 head with IoU-aware branch -> grid-sensitive decoding and Matrix NMS. Defaults are those
of PaddleDetection ``configs/ppyolo/ppyolov2_r50vd_dcn_365e_coco.yml`` and its ``_base_`` files.

Parameter counts (``lumbardx.models.detector.count_parameters``), equal to PaddleDetection's
trainable parameters:

=================  ===========  ===========  =============================================
model              nc = 80      nc = 3       backbone / neck / head (nc = 80)
=================  ===========  ===========  =============================================
ppyolov2 (R50)     54,579,383   54,164,738   23,900,593 / 30,215,680 / 463,110
ppyolov2-r101      73,571,511   73,156,866   42,892,721 / 30,215,680 / 463,110
=================  ===========  ===========  =============================================

``ppyolov2-r18`` is lumbardx's CPU-friendly variant, not a published model: ResNet18-vd
(11.2 M parameters, no DCN; the backbone of PaddleDetection's PP-YOLO R18,
``configs/ppyolo/_base_/ppyolo_r18vd.yml``) with the PP-YOLOv2 neck at a quarter of the width
(``base_channels`` 128 instead of 512: outputs 64/128/256 channels) and two instead of three
conv pairs per block (1.47 M), the same IoU-aware head (tiny), three levels and COCO anchors, so
it shares the loss, targets and post-processing of the full model. 12.7 M parameters
(12,685,937 at nc = 3) and about 18 G MACs at 640 x 640, against 57 G for the R50 model
(``count_macs``, which leaves the deformable convolutions out).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from lumbardx.models.detector import Detector
from lumbardx.models.loss_yolov3 import YOLOv3Loss
from lumbardx.models.matrix_nms import Kernel
from lumbardx.models.postprocess_yolov3 import NMSKind, YOLOv3PostProcess
from lumbardx.models.ppyolo_head import YOLOv3Head
from lumbardx.models.ppyolo_pan import PANConfig, PPYOLOPAN
from lumbardx.models.registry import register
from lumbardx.models.resnet_vd import ResNetVd

# ppyolov2_r50vd_dcn.yml YOLOv3Head.anchors (width, height in pixels), small to large
COCO_ANCHORS: tuple[tuple[float, float], ...] = (
    (10, 13), (16, 30), (33, 23),
    (30, 61), (62, 45), (59, 119),
    (116, 90), (156, 198), (373, 326),
)  # fmt: skip
# reference masks [[6, 7, 8], [3, 4, 5], [0, 1, 2]] list stride 32 first; ours stride 8 first
ANCHOR_MASKS: tuple[tuple[int, ...], ...] = ((0, 1, 2), (3, 4, 5), (6, 7, 8))
STRIDES: tuple[int, ...] = (8, 16, 32)


@dataclass(frozen=True)
class PPYOLOv2Config:
    """Every setting of a PP-YOLOv2 model; defaults from ``ppyolov2_r50vd_dcn.yml``.

    Attributes:
        depth: ResNet-vd depth (``ResNet.depth``: 50).
        dcn_v2_stages: 0-based ResNet stages with DCNv2 (``dcn_v2_stages: [3]``).
        neck: PAN widths and DropBlock/SPP settings (``PPYOLOPAN``).
        anchors: 9 anchors (width, height) in pixels, small to large (``YOLOv3Head.anchors``).
        anchor_masks: anchor indices for strides 8, 16, 32.
        iou_aware: IoU-aware head branch (``iou_aware: true``).
        iou_aware_factor: IoU exponent in the confidence (``iou_aware_factor: 0.5``).
        scale_x_y: grid-sensitive factor (``YOLOv3Loss.scale_x_y``, ``YOLOBox.scale_x_y``: 1.05).
        ignore_thresh: objectness ignore IoU (``ignore_thresh: 0.7``).
        iou_loss_weight: IoU loss weight (``IouLoss.loss_weight: 2.5``, ``loss_square: true``).
        iou_aware_loss_weight: IoU-aware loss weight (``IouAwareLoss.loss_weight: 1.0``).
        label_smooth: class label smoothing (``label_smooth: false``).
        nms: ``"matrix"`` (``MatrixNMS``) or ``"hard"``.
        conf_thresh: decode confidence / NMS score / post threshold (all 0.01).
        nms_iou: IoU threshold when ``nms == "hard"``.
        max_det: boxes kept per image (``keep_top_k: 100``).
        nms_top_k: candidates per class entering NMS. The config's ``-1`` (all) makes Matrix
            NMS quadratic in the candidates of an untrained model; 1000 bounds memory.
        matrix_kernel: ``"linear"`` (``use_gaussian: false``) or ``"gaussian"``.
    """

    depth: int = 50
    dcn_v2_stages: tuple[int, ...] = (3,)
    neck: PANConfig = field(default_factory=PANConfig)
    anchors: tuple[tuple[float, float], ...] = COCO_ANCHORS
    anchor_masks: tuple[tuple[int, ...], ...] = ANCHOR_MASKS
    iou_aware: bool = True
    iou_aware_factor: float = 0.5
    scale_x_y: float = 1.05
    ignore_thresh: float = 0.7
    iou_loss_weight: float | None = 2.5
    iou_aware_loss_weight: float = 1.0
    label_smooth: bool = False
    nms: NMSKind = "matrix"
    conf_thresh: float = 0.01
    nms_iou: float = 0.45
    max_det: int = 100
    nms_top_k: int = 1000
    matrix_kernel: Kernel = "linear"


PPYOLOV2_R50 = PPYOLOv2Config()
PPYOLOV2_R101 = PPYOLOv2Config(depth=101)  # ppyolov2_r101vd_dcn_365e_coco.yml
PPYOLOV2_R18 = PPYOLOv2Config(
    depth=18, dcn_v2_stages=(), neck=PANConfig(base_channels=128, conv_block_num=2)
)


def build_ppyolov2(
    num_classes: int, cfg: PPYOLOv2Config = PPYOLOV2_R50, name: str = "ppyolov2"
) -> Detector:
    """Assemble a randomly initialised PP-YOLOv2 :class:`Detector` from ``cfg``."""
    if len(cfg.anchors) != sum(len(m) for m in cfg.anchor_masks):
        raise ValueError("every anchor must belong to exactly one anchor mask")
    backbone = ResNetVd(cfg.depth, return_idx=(1, 2, 3), dcn_v2_stages=cfg.dcn_v2_stages)
    neck = PPYOLOPAN(backbone.out_channels, cfg.neck)
    num_anchors = len(cfg.anchor_masks[0])
    head = YOLOv3Head(neck.out_channels, num_classes, num_anchors, iou_aware=cfg.iou_aware)
    loss = YOLOv3Loss(
        num_classes,
        cfg.anchors,
        cfg.anchor_masks,
        STRIDES,
        scale_x_y=cfg.scale_x_y,
        iou_loss_weight=cfg.iou_loss_weight,
        iou_aware=cfg.iou_aware,
        ignore_thresh=cfg.ignore_thresh,
        iou_aware_loss_weight=cfg.iou_aware_loss_weight,
        label_smooth=cfg.label_smooth,
    )
    post = YOLOv3PostProcess(
        num_classes,
        cfg.anchors,
        cfg.anchor_masks,
        STRIDES,
        scale_x_y=cfg.scale_x_y,
        iou_aware=cfg.iou_aware,
        iou_aware_factor=cfg.iou_aware_factor,
        nms=cfg.nms,
        conf_thresh=cfg.conf_thresh,
        nms_iou=cfg.nms_iou,
        max_det=cfg.max_det,
        nms_top_k=cfg.nms_top_k,
        matrix_kernel=cfg.matrix_kernel,
    )
    return Detector(backbone, neck, head, loss, post, name=name)


def _with_overrides(cfg: PPYOLOv2Config, overrides: dict[str, Any]) -> PPYOLOv2Config:
    """``cfg`` with fields replaced by keyword overrides (e.g. ``anchors=...``, ``nms="hard"``)."""
    known = {f.name for f in fields(PPYOLOv2Config)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown PP-YOLOv2 option(s) {unknown}; known: {sorted(known)}")
    if "anchors" in overrides:
        overrides["anchors"] = tuple(tuple(float(v) for v in a) for a in overrides["anchors"])
    return replace(cfg, **overrides)


@register("ppyolov2")
def ppyolov2(num_classes: int, **overrides: Any) -> Detector:
    """PP-YOLOv2 ResNet50-vd-DCN (the study's model); keyword overrides of
    :class:`PPYOLOv2Config`."""
    return build_ppyolov2(num_classes, _with_overrides(PPYOLOV2_R50, overrides), "ppyolov2")


@register("ppyolov2-r101")
def ppyolov2_r101(num_classes: int, **overrides: Any) -> Detector:
    """PP-YOLOv2 ResNet101-vd-DCN."""
    return build_ppyolov2(num_classes, _with_overrides(PPYOLOV2_R101, overrides), "ppyolov2-r101")


@register("ppyolov2-r18")
def ppyolov2_r18(num_classes: int, **overrides: Any) -> Detector:
    """CPU-friendly PP-YOLOv2 with ResNet18-vd and a quarter-width neck (see module docstring)."""
    return build_ppyolov2(num_classes, _with_overrides(PPYOLOV2_R18, overrides), "ppyolov2-r18")
