"""Reference models for tests/test_reference_paddle.py, run by .venv-paddle's Python (one
architecture per process: ppdet's config registry is global). They are built from
PaddleDetection's own classes and the model sections of the published configs (written out
here: the wheel ships no configs), with random weights, BatchNorm statistics and DCNv2 offsets,
saved with paddle.save.

Usage: python reference_paddle.py OUT SPEC [SPEC ...], the SPECs of one process built from
one config template (ppyolov2 and ppyolov2-r101 differ only in depth), each one of
  NAME:NC:PROTOCOL (ppyolov2 or yolov3) -> OUT/NAME.pdparams (float32, pickle PROTOCOL) and
      OUT/NAME-outputs.npz: x [1, 3, 320, 320]; raw64{i} and raw32{i}, the head convolutions'
      outputs [1, C, H, W], stride 32 first, in float64 and float32; boxes [1, N, 4] and
      scores [1, nc, N], YOLOBox before NMS (float64 pass);
  names:NAME:NC -> OUT/NAME-names.json, the state dict's [name, shape] in order (nothing run);
  dcn -> OUT/dcn.npz: paddle.vision.ops.deform_conv2d on random inputs, offsets of about two
      pixels and masks, strides 1 and 2.
"""

import json
import os
import sys
import tempfile

import numpy as np
import paddle
import ppdet.modeling  # noqa: F401  (registers the classes)
from ppdet.core.workspace import create, load_config

ANCHORS = """
  anchors: [[10, 13], [16, 30], [33, 23], [30, 61], [62, 45], [59, 119],
            [116, 90], [156, 198], [373, 326]]
  anchor_masks: [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
"""
# configs/ppyolo/_base_/ppyolov2_r50vd_dcn.yml (norm_type bn: sync_bn needs several devices)
PPYOLOV2 = """
architecture: YOLOv3
num_classes: {nc}
norm_type: bn
YOLOv3:
  backbone: ResNet
  neck: PPYOLOPAN
  yolo_head: YOLOv3Head
  post_process: BBoxPostProcess
ResNet:
  depth: {depth}
  variant: d
  return_idx: [1, 2, 3]
  dcn_v2_stages: [3]
  freeze_at: -1
  freeze_norm: false
  norm_decay: 0.
PPYOLOPAN:
  drop_block: true
  block_size: 3
  keep_prob: 0.9
  spp: true
YOLOv3Head:{anchors}
  loss: YOLOv3Loss
  iou_aware: true
  iou_aware_factor: 0.5
YOLOv3Loss:
  ignore_thresh: 0.7
  downsample: [32, 16, 8]
  label_smooth: false
  scale_x_y: 1.05
  iou_loss: IouLoss
  iou_aware_loss: IouAwareLoss
IouLoss:
  loss_weight: 2.5
  loss_square: true
IouAwareLoss:
  loss_weight: 1.0
BBoxPostProcess:
  decode:
    name: YOLOBox
    conf_thresh: 0.01
    downsample_ratio: 32
    clip_bbox: true
    scale_x_y: 1.05
  nms:
    name: MatrixNMS
    keep_top_k: 100
    score_threshold: 0.01
    post_threshold: 0.01
    nms_top_k: -1
    background_label: -1
"""
# configs/yolov3/_base_/yolov3_darknet53.yml
YOLOV3 = """
architecture: YOLOv3
num_classes: {nc}
norm_type: bn
YOLOv3:
  backbone: DarkNet
  neck: YOLOv3FPN
  yolo_head: YOLOv3Head
  post_process: BBoxPostProcess
DarkNet:
  depth: 53
  return_idx: [2, 3, 4]
YOLOv3Head:{anchors}
  loss: YOLOv3Loss
YOLOv3Loss:
  ignore_thresh: 0.7
  downsample: [32, 16, 8]
  label_smooth: false
BBoxPostProcess:
  decode:
    name: YOLOBox
    conf_thresh: 0.005
    downsample_ratio: 32
    clip_bbox: true
  nms:
    name: MultiClassNMS
    keep_top_k: 100
    score_threshold: 0.01
    nms_threshold: 0.45
    nms_top_k: 1000
"""
CONFIGS = {"ppyolov2": PPYOLOV2, "ppyolov2-r101": PPYOLOV2, "yolov3": YOLOV3}
DEPTHS = {"ppyolov2": 50, "ppyolov2-r101": 101, "yolov3": 53}


def build(name: str, nc: int):
    """The reference architecture of ``name`` from its config, randomly initialised."""
    path = os.path.join(tempfile.mkdtemp(), f"{name}.yml")
    with open(path, "w") as f:
        f.write(CONFIGS[name].format(nc=nc, depth=DEPTHS[name], anchors=ANCHORS))
    paddle.seed(0)
    return create(load_config(path).architecture)


def randomise(model, x: np.ndarray) -> None:
    """Random BatchNorm affine parameters and statistics of the right scale, and random DCNv2
    offset/mask convolutions (zero at init, which would leave the deformable sampling
    untested). The statistics are those of ``x`` (one training-mode pass with momentum 0, the
    variances floored at 0.1), then jittered: activations stay near unit scale, so float32
    rounding stays small and the outputs are far from saturating sigmoids.
    """
    rng = np.random.RandomState(0)
    norms = [m for m in model.sublayers() if isinstance(m, paddle.nn.BatchNorm2D)]
    for layer in norms:
        n = layer.weight.shape[0]
        layer.weight.set_value(rng.uniform(0.5, 1.5, n))
        layer.bias.set_value(rng.uniform(-0.2, 0.2, n))
        layer._momentum = 0.0
    for layer in model.sublayers():
        if hasattr(layer, "conv_offset"):
            w, b = layer.conv_offset.weight, layer.conv_offset.bias
            w.set_value(rng.normal(0, 0.01, w.shape).astype(w.numpy().dtype))
            b.set_value(rng.normal(0, 1.0, b.shape).astype(b.numpy().dtype))
    model.train()
    with paddle.no_grad():
        model.neck(model.backbone({"image": paddle.to_tensor(x)}))
    model.eval()
    for layer in norms:
        n = layer.weight.shape[0]
        var = np.maximum(layer._variance.numpy(), 0.1) * rng.uniform(0.8, 1.25, n)
        layer._mean.set_value(layer._mean.numpy() + rng.uniform(-0.1, 0.1, n) * np.sqrt(var))
        layer._variance.set_value(var)
        layer._momentum = 0.9


def outputs(model, x: np.ndarray, tag: str) -> dict:
    """The head convolutions' outputs ``raw{tag}{i}`` (stride 32 first) and, for the float64
    pass, the ``YOLOBox`` boxes and scores before NMS."""
    with paddle.no_grad():
        feats = model.neck(model.backbone({"image": paddle.to_tensor(x)}))
        raw = [conv(f) for conv, f in zip(model.yolo_head.yolo_outputs, feats)]
        arrays = {f"raw{tag}{i}": r.numpy() for i, r in enumerate(raw)}
        if tag == "64":
            head_outs = model.yolo_head(feats)
            size, scale = paddle.to_tensor([[320.0, 320.0]]), paddle.to_tensor([[1.0, 1.0]])
            boxes, scores = model.post_process.decode(head_outs, model.yolo_head.mask_anchors,
                                                      size, scale)
            arrays.update(boxes=boxes.numpy(), scores=scores.numpy())
    return arrays


def write(name: str, nc: int, protocol: int, out: str) -> None:
    """One model, its ``.pdparams`` and its outputs (module docstring). Built and run in
    float64 with weights rounded to float32 values, saved in float32 (as checkpoints are), and
    run again in float32: the float64 outputs are the exact function of the saved weights."""
    paddle.set_default_dtype("float64")
    model = build(name, nc)
    x = np.random.RandomState(1).rand(1, 3, 320, 320).astype("float32")
    randomise(model, x.astype("float64"))
    for param in model.parameters():
        param.set_value(param.numpy().astype("float32").astype("float64"))
    arrays = outputs(model, x.astype("float64"), "64")
    model.to(dtype="float32")
    paddle.save(model.state_dict(), os.path.join(out, f"{name}.pdparams"), protocol=protocol)
    arrays.update(outputs(model, x, "32"))
    np.savez(os.path.join(out, f"{name}-outputs.npz"), x=x, **arrays)


def names(name: str, nc: int, out: str) -> None:
    """The state dict's names and shapes, in order."""
    state = build(name, nc).state_dict()
    with open(os.path.join(out, f"{name}-names.json"), "w") as f:
        json.dump([[k, list(v.shape)] for k, v in state.items()], f)


def dcn(out: str) -> None:
    """``deform_conv2d`` with offsets of a few pixels (some sampling outside the map)."""
    from paddle.vision.ops import deform_conv2d

    rng = np.random.RandomState(2)
    arrays = {}
    for stride in (1, 2):
        x = rng.randn(2, 8, 11, 12).astype("float32")
        ho, wo = (11 - 1) // stride + 1, (12 - 1) // stride + 1
        offset = (rng.randn(2, 18, ho, wo) * 2.0).astype("float32")
        mask = rng.rand(2, 9, ho, wo).astype("float32")
        weight = (rng.randn(16, 8, 3, 3) * 0.2).astype("float32")
        y = deform_conv2d(paddle.to_tensor(x), paddle.to_tensor(offset),
                          paddle.to_tensor(weight), stride=stride, padding=1,
                          mask=paddle.to_tensor(mask))
        arrays.update({f"x{stride}": x, f"offset{stride}": offset, f"mask{stride}": mask,
                       f"weight{stride}": weight, f"y{stride}": y.numpy()})
    np.savez(os.path.join(out, "dcn.npz"), **arrays)


if __name__ == "__main__":
    paddle.set_device("cpu")
    for spec in (arg.split(":") for arg in sys.argv[2:]):
        if spec[0] == "dcn":
            dcn(sys.argv[1])
        elif spec[0] == "names":
            names(spec[1], int(spec[2]), sys.argv[1])
        else:
            write(spec[0], int(spec[1]), int(spec[2]), sys.argv[1])
