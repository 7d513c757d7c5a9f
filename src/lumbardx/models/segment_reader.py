"""The segment reader: per-level probabilities from motion-segment crops, read in context.

Input: the crops of one image's discs, top to bottom (:mod:`lumbardx.engine.segments`),
``float32 [B, L, C, H, W]`` (``C`` = 2: T1 and T2; a single slice fills both) with a mask
``bool [B, L]`` for padded levels, and each level's position features ``float32 [B, L, F]``
(:func:`level_features`).

1. **Encoder**: a small CNN maps each crop to an embedding ``[B, L, D]``.
2. **Context**: two residual 1-D convolutions (kernel 3) along the levels let each segment see
   its neighbours (a slip reads as a step in the column; a level's expected look depends on
   where it is), masked so padding contributes nothing.
3. **Heads**: one logit per label of :data:`LABELS` (independent, a disc can be herniated and
   slipped; ``lumbosacral`` says whether the disc is L5-S1, the check on the level count) and
   the anterior offset of the upper vertebra in spacings (the slip measurement;
   trained on synthetic slips of exact size and on normal segments, 0).

Probabilities are calibrated by Platt scaling per label (``a * logit + b``), fitted on
out-of-fold logits of the cross-validation (:attr:`SegmentReader.calibration`); the identity
until fitted. A :class:`SegmentEnsemble` reads with several readers and averages their logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

LABELS: tuple[str, ...] = ("normal", "herniation", "spondylolisthesis", "stenosis",
                           "degeneration", "lumbosacral")
#: Labels that are findings of a disc; ``lumbosacral`` (the disc is L5-S1: the vertebra below
#: it is the sacrum) checks the level count instead.
FINDING_LABELS: tuple[str, ...] = LABELS[:5]
N_FEATURES = 3


@dataclass
class SegmentReaderConfig:
    """Architecture of a :class:`SegmentReader`.

    Attributes:
        channels: input planes per crop (2: T1, T2).
        width: channels of the first convolution (doubled at each of four stages, capped).
        embed: embedding size ``D``.
        labels: output labels, in order.
        size: ``(rows, columns)`` of the crops it was trained on.
        extent: crop extent ``(u0, u1, v0, v1)`` in spacings.
    """

    channels: int = 2
    width: int = 16
    embed: int = 96
    labels: tuple[str, ...] = LABELS
    size: tuple[int, int] = (72, 64)
    extent: tuple[float, float, float, float] = (-1.3, 1.3, -1.0, 1.4)
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SegmentReaderConfig:
        """Rebuild from :func:`dataclasses.asdict` output (tuples restored)."""
        r = dict(raw)
        for k in ("labels", "size", "extent"):
            if k in r:
                r[k] = tuple(r[k])
        r["calibration"] = {k: (float(v[0]), float(v[1]))
                            for k, v in dict(r.get("calibration", {})).items()}
        return cls(**r)


def level_features(n_levels: int, index: Tensor | None = None) -> Tensor:
    """Position features ``float32 [L, 3]`` of ``L`` discs top to bottom: position from the
    bottom (0 = lowest, in units of 5 levels), from the top (same), and whether it is the
    lowest disc. Counted in the discs found, not in level names (those may be uncertain)."""
    i = torch.arange(n_levels, dtype=torch.float32) if index is None else index.float()
    from_bottom = (n_levels - 1 - i) / 5.0
    return torch.stack([from_bottom, i / 5.0, (from_bottom == 0).float()], dim=-1)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.SiLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
        nn.SiLU(inplace=True))


class _Context(nn.Module):
    """Residual masked 1-D convolution along the levels: ``[B, L, D] -> [B, L, D]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(dim, dim, 3, padding=1)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(x.dtype)
        y = self.conv((x * m).transpose(1, 2)).transpose(1, 2)
        return self.norm(x + torch.nn.functional.silu(y)) * m


class SegmentReader(nn.Module):
    """Per-level logits and slip offset from a sequence of segment crops (module docstring).

    ``forward(crops [B, L, C, H, W], mask [B, L], features [B, L, F])`` returns
    ``(logits [B, L, K], offset [B, L])`` with ``K = len(config.labels)``; ``offset`` in
    spacings (anterior positive).
    """

    def __init__(self, config: SegmentReaderConfig | None = None) -> None:
        super().__init__()
        self.config = config or SegmentReaderConfig()
        c, w, d = self.config.channels, self.config.width, self.config.embed
        widths = [w, 2 * w, 4 * w, min(8 * w, 128)]
        stages, cin = [], c
        for cout in widths:
            stages.append(_block(cin, cout))
            cin = cout
        self.encoder = nn.Sequential(*stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                     nn.Linear(cin, d))
        self.features = nn.Linear(N_FEATURES, d)
        self.context = nn.ModuleList([_Context(d), _Context(d)])
        self.head = nn.Linear(d, len(self.config.labels))
        self.offset = nn.Linear(d, 1)

    def forward(self, crops: Tensor, mask: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        b, n = crops.shape[:2]
        flat = crops.reshape(b * n, *crops.shape[2:])
        emb = self.encoder(flat).reshape(b, n, -1) + self.features(features)
        for layer in self.context:
            emb = layer(emb, mask)
        return self.head(emb), self.offset(emb).squeeze(-1)

    def calibrated(self, logits: Tensor) -> Tensor:
        """Probabilities ``[..., K]`` from logits with the stored Platt scaling per label."""
        cal = self.config.calibration
        a = torch.tensor([cal.get(k, (1.0, 0.0))[0] for k in self.config.labels],
                         dtype=logits.dtype, device=logits.device)
        b = torch.tensor([cal.get(k, (1.0, 0.0))[1] for k in self.config.labels],
                         dtype=logits.dtype, device=logits.device)
        return torch.sigmoid(a * logits + b)

    def checkpoint(self) -> dict[str, Any]:
        """A dict for :func:`torch.save` that :func:`load_segment_reader` reads back."""
        return {"kind": "segment_reader", "config": asdict(self.config),
                "state_dict": self.state_dict()}


class SegmentEnsemble(nn.Module):
    """Several :class:`SegmentReader` of one configuration read as one: the members' raw
    logits and offsets are averaged (then calibrated as one reader's, with the calibration of
    ``config``, fitted on the averaged out-of-fold logits of the members' cross-validations;
    docs/segments.md measures what averaging gives). Same call and outputs as a reader.

    Raises:
        ValueError: fewer than two members, or members that read different crops or labels.
    """

    def __init__(self, members: Sequence[SegmentReader]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two segment readers")
        first = members[0].config
        for m in members[1:]:
            c = m.config
            if (c.channels, c.size, c.extent, c.labels) != (first.channels, first.size,
                                                            first.extent, first.labels):
                raise ValueError("ensemble members must read the same crops and labels")
        self.members = nn.ModuleList(members)
        self.config = first

    def forward(self, crops: Tensor, mask: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        outs = [m(crops, mask, features) for m in self.members]
        return (torch.stack([o[0] for o in outs]).mean(0),
                torch.stack([o[1] for o in outs]).mean(0))

    calibrated = SegmentReader.calibrated

    def checkpoint(self) -> dict[str, Any]:
        """As :meth:`SegmentReader.checkpoint`, the first member's weights in ``state_dict``
        and the others' in ``more_members`` (each with its configuration)."""
        first, *rest = self.members
        return {"kind": "segment_reader", "config": asdict(self.config),
                "state_dict": first.state_dict(),
                "more_members": [{"config": asdict(m.config), "state_dict": m.state_dict()}
                                 for m in rest]}


def load_segment_reader(raw: dict[str, Any]) -> SegmentReader | SegmentEnsemble:
    """A :class:`SegmentReader` (or, with ``more_members``, a :class:`SegmentEnsemble`) in eval
    mode from :meth:`SegmentReader.checkpoint` / :meth:`SegmentEnsemble.checkpoint` output."""
    if not isinstance(raw, dict) or raw.get("kind") != "segment_reader":
        raise ValueError("not a segment reader checkpoint")
    model = SegmentReader(SegmentReaderConfig.from_dict(raw["config"]))
    model.load_state_dict(raw["state_dict"])
    more = raw.get("more_members") or []
    if not more:
        return model.eval()
    members = [model]
    for entry in more:
        member = SegmentReader(SegmentReaderConfig.from_dict(entry["config"]))
        member.load_state_dict(entry["state_dict"])
        members.append(member)
    return SegmentEnsemble(members).eval()
