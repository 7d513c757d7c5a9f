"""A second stage for spondylolisthesis: a small crop classifier that rescores slip boxes.

Why: a one-stage detector finds the slipped segments (on yolospine-dev 96 of 98 are localised
by a spondylolisthesis prediction out of fold) but scores them below the spondylolisthesis
predictions it also places on herniated discs at *other* levels, so the rare class loses its
AP to herniation-vs-slip confusion (``docs/training.md``). The verifier looks again, at
full input resolution, at the segment around each spondylolisthesis box and asks only "is this
segment slipped?".

What it does, for one image of the detector's input (``float32 [3, H, W]`` in [0, 1], gray
repeated, or T1, T2 and their mean for a detector trained on T1/T2 pairs; letterboxed) and its
detections (``boxes [K, 4]`` xyxy input pixels, ``scores [K]``,
``labels [K]``):

1. every box of class :attr:`VerifierConfig.class_index` is widened about its centre by
   :attr:`VerifierConfig.context` (the vertebrae above and below) and resampled to
   ``crop_size x crop_size`` (``torchvision.ops.roi_align``, bilinear), from the gray slice, or
   from T1 and T2 (:attr:`VerifierConfig.channels` 2);
2. each of :attr:`VerifierConfig.members` small CNNs (:class:`CropNet`) gives a probability,
   averaged over the crop and its left-right mirror image and over members: ``p [N]``
   (in PyTorch, or in ONNX Runtime after :meth:`SlipVerifier.use_onnxruntime`);
3. the box's score becomes the weighted geometric mean
   ``(score * p ** power) ** (1 / (1 + power))`` (:attr:`VerifierConfig.power`; other classes
   are untouched): it ranks boxes as ``score * p ** power`` does, a larger power trusting the
   verifier more than the detector's own class score, and stays on the scale of a
   probability (power 1: ``sqrt(score * p)``). It can raise a low detector score, so the
   detector must hand over its candidates down to the evaluation confidence
   (:func:`lumbardx.models.pretrained.set_candidate_floor` keeps them when a rescorer is set).

The verifier is attached to a :class:`~lumbardx.models.detector.Detector` as its
``rescorer`` and travels in the same checkpoint (key ``rescorer``: :meth:`SlipVerifier.config`);
it is trained by :func:`lumbardx.engine.slip_verifier.train_slip_verifier`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

#: Checkpoint key holding the rescorer's configuration (:meth:`SlipVerifier.config`).
RESCORER_KEY = "rescorer"


@dataclass(frozen=True)
class VerifierConfig:
    """Shape of a :class:`SlipVerifier`.

    Attributes:
        class_index: the class whose boxes are rescored (spondylolisthesis).
        context: crop side / box side (1.4: 20% of the box on every side).
        crop_size: crop side in pixels after resampling.
        width: channels of the first CNN block (doubling over four blocks).
        members: independently trained CNNs whose probabilities are averaged.
        power: weight of the verifier's probability against the detector's score (step 3;
            not used in training; chosen on held-out folds, ``docs/training.md``).
        channels: input channels cropped from the detector's input: 1 (channel 0, the gray
            slice) or 2 (channels 0 and 1: T1 and T2, for a detector trained on T1/T2 pairs,
            recipe ``sequence_pairs``).
    """

    class_index: int
    context: float = 1.4
    crop_size: int = 48
    width: int = 16
    members: int = 3
    power: float = 1.0
    channels: int = 1

    def __post_init__(self) -> None:
        if self.class_index < 0 or self.context < 1.0 or self.crop_size < 16 \
                or self.width < 1 or self.members < 1 or not 0.0 <= self.power <= 100.0 \
                or self.channels not in (1, 2):
            raise ValueError(f"invalid verifier configuration {self}")

    @classmethod
    def from_dict(cls, raw: Any) -> VerifierConfig:
        """From :meth:`SlipVerifier.config` output (unknown keys are refused).

        Raises:
            ValueError: not a mapping, unknown keys or invalid values.
        """
        if not isinstance(raw, dict) or raw.get("kind") != "slip_verifier":
            raise ValueError(f"not a slip verifier configuration: {raw!r}")
        known = {f.name for f in fields(cls)}
        extra = set(raw) - known - {"kind"}
        if extra:
            raise ValueError(f"unknown slip verifier settings: {sorted(extra)}")
        return cls(**{k: v for k, v in raw.items() if k in known})


def rescore(score: Tensor, p: Tensor, power: float) -> Tensor:
    """``(score * p ** power) ** (1 / (1 + power))`` elementwise (module docstring, step 3);
    ``score`` and ``p`` in [0, 1], any equal shapes."""
    if power == 0:
        return score.clone()
    tiny = torch.finfo(score.dtype).tiny
    log = torch.log(score.clamp_min(tiny)) + power * torch.log(p.clamp_min(tiny))
    out = torch.exp(log / (1.0 + power))
    return torch.where((score > 0) & (p > 0), out, torch.zeros_like(out))


def crop_boxes(image: Tensor, boxes: Tensor, context: float, size: int) -> Tensor:
    """Crops of one image around boxes, widened by ``context`` about their centres.

    Args:
        image: ``float32 [C, H, W]``.
        boxes: ``float32 [N, 4]`` xyxy in the image's pixels.

    Returns:
        ``float32 [N, C, size, size]`` (zeros outside the image).
    """
    boxes = boxes.to(image.dtype).reshape(-1, 4)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).clamp_min(1.0) * (context / 2)
    wide = torch.cat([centre - half, centre + half], 1)
    return roi_align(image[None], [wide], output_size=size, spatial_scale=1.0,
                     sampling_ratio=2, aligned=True)


class CropNet(nn.Module):
    """Four blocks of two 3x3 convolutions (BatchNorm, SiLU) and 2x2 max-pooling, global average
    pooling, dropout and one logit. Input ``[N, C, S, S]`` in [0, 1] (``C = channels``: gray, or
    T1 and T2; S a multiple of 16), output ``[N]`` logits."""

    def __init__(self, width: int = 16, channels: int = 1) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                nn.SiLU(), nn.MaxPool2d(2))

        w = width
        self.features = nn.Sequential(block(channels, w), block(w, 2 * w), block(2 * w, 4 * w),
                                      block(4 * w, 8 * w))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.3),
                                  nn.Linear(8 * w, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features((x - 0.5) / 0.25))[:, 0]


class _Probability(nn.Module):
    """The verifier's CNN part as one graph: crops ``[N, C, S, S]`` -> ``[N]`` probability
    (members and mirror images averaged), for export to ONNX Runtime."""

    def __init__(self, nets: nn.ModuleList) -> None:
        super().__init__()
        self.nets = nets

    def forward(self, crops: Tensor) -> Tensor:
        both = torch.cat([crops, crops.flip(-1)])
        p = torch.stack([torch.sigmoid(net(both)) for net in self.nets]).mean(0)
        n = crops.shape[0]
        return (p[:n] + p[n:]) / 2


class SlipVerifier(nn.Module):
    """The second stage of the module docstring.

    Args:
        config: its shape; :attr:`VerifierConfig.members` :class:`CropNet` are built (trained
            weights come from a checkpoint or from training).
    """

    def __init__(self, config: VerifierConfig) -> None:
        super().__init__()
        self.settings = config
        self.nets = nn.ModuleList(CropNet(config.width, config.channels)
                                  for _ in range(config.members))
        self._session: Any = None  # an ONNX Runtime session of the CNNs (use_onnxruntime)

    def use_onnxruntime(self, threads: int | None = None) -> None:
        """Run the CNNs in ONNX Runtime from now on (the crops and rescoring stay in PyTorch);
        the weights are frozen into the session, so call it after training or loading.

        Raises:
            ImportError: ``onnx`` or ``onnxruntime`` is not installed.
            RuntimeError: the export or the session fails.
        """
        import onnxruntime as ort

        s = self.settings
        buffer = io.BytesIO()
        graph = _Probability(self.nets).eval()
        dummy = torch.zeros(2, s.channels, s.crop_size, s.crop_size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, (dummy,), buffer, dynamo=False, opset_version=17,
                              input_names=["crops"], output_names=["p"],
                              dynamic_axes={"crops": {0: "n"}, "p": {0: "n"}})
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(buffer.getvalue(), sess_options=options,
                                             providers=["CPUExecutionProvider"])

    @property
    def runtime(self) -> str:
        """``"onnxruntime"`` or ``"torch"``: what runs the CNNs."""
        return "torch" if self._session is None else "onnxruntime"

    def config(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild it (:meth:`VerifierConfig.from_dict`)."""
        return {"kind": "slip_verifier", **asdict(self.settings)}

    def crops(self, image: Tensor, boxes: Tensor) -> Tensor:
        """``image [C, H, W]`` (its first ``channels`` are used), ``boxes [N, 4]`` ->
        ``[N, channels, S, S]``."""
        s = self.settings
        return crop_boxes(image[:s.channels], boxes, s.context, s.crop_size)

    def probability(self, crops: Tensor) -> Tensor:
        """``[N, C, S, S]`` -> ``[N]`` slip probability (members and mirror images averaged)."""
        if len(crops) == 0:
            return crops.new_zeros(0)
        if self._session is not None and not self.training:
            x = np.ascontiguousarray(crops.detach().cpu().numpy(), dtype=np.float32)
            (p,) = self._session.run(None, {"crops": x})
            return torch.from_numpy(p).to(crops.device, crops.dtype)
        return _Probability(self.nets)(crops)

    def least_score_reaching(self, threshold: float, class_index: int) -> float:
        """The lowest detector score of class ``class_index`` that rescoring can lift to
        ``threshold``: ``threshold ** (1 + power)`` for the verified class (the rescored score
        ``(score * p ** power) ** (1 / (1 + power))`` never exceeds ``score ** (1 / (1 +
        power))``, as ``p <= 1``), ``threshold`` for the others (not rescored)."""
        if class_index != self.settings.class_index:
            return float(threshold)
        return float(threshold) ** (1.0 + self.settings.power)

    def forward(self, images: Tensor, detections: list[dict[str, Tensor]]
                ) -> list[dict[str, Tensor]]:
        """Rescore the detections of a batch (see the module docstring).

        Args:
            images: ``float32 [B, C, H, W]`` in [0, 1], the detector's input.
            detections: ``B`` dicts with ``boxes [K, 4]`` (input pixels), ``scores [K]``,
                ``labels [K]``; other keys pass through.

        Returns:
            The same dicts with rescored ``scores`` (new tensors; the inputs are not changed).
        """
        out = []
        for image, det in zip(images, detections):
            mine = det["labels"] == self.settings.class_index
            if not bool(mine.any()):
                out.append(det)
                continue
            p = self.probability(self.crops(image.float(), det["boxes"][mine].float()))
            scores = det["scores"].clone()
            scores[mine] = rescore(scores[mine], p.to(scores.dtype), self.settings.power)
            out.append({**det, "scores": scores})
        return out


def build_rescorer(raw: Any) -> SlipVerifier:
    """The (untrained) rescorer a checkpoint's ``rescorer`` entry describes.

    Raises:
        ValueError: the entry is not a known rescorer configuration.
    """
    return SlipVerifier(VerifierConfig.from_dict(raw))
