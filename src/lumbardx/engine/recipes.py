"""Typed training recipes: one dataclass for the whole recipe, one small factory per family.

A :class:`Recipe` holds every number the trainer uses (optimiser, schedule, EMA, augmentation,
sampling, sizes). Factories reproduce each reference's defaults, cited next to the value:

* :func:`yolov5_recipe` -- ultralytics/yolov5 v7.0 ``data/hyps/hyp.scratch-low.yaml`` and
  ``train.py`` (SGD nesterov, nominal batch 64, linear lr to ``lrf``, EMA ramp, clip 10).
* :func:`ppyolov2_recipe` -- PaddleDetection ``configs/ppyolo/_base_/optimizer_365e.yml`` and
  ``ppyolov2_reader.yml``; the learning rate is scaled linearly from the reference total batch
  (12 images x 8 GPUs = 96) to the actual total batch.
* :func:`yolov3_recipe` -- PaddleDetection ``configs/yolov3/_base_/optimizer_270e.yml`` and
  ``yolov3_reader.yml`` (batch 8 x 8 GPUs = 64), lr scaled the same way.

``small_data=True`` (the default of :func:`recipe_for`) applies the project's defaults for
training **from scratch on a few hundred images** (the ~660 training images of a 5-fold split):
the reference epoch counts were set for COCO's 118k images, so with ~40 iterations per epoch the
warm-up is given in epochs instead of the reference's thousands of iterations, training runs
longer (300 epochs), and augmentation is kept strong (mosaic for YOLOv5, mixup + crop/expand for
the Paddle family) to fight over-fitting. Every such change is listed in :func:`apply_small_data`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

Schedule = Literal["linear", "cosine", "piecewise"]
EmaKind = Literal["yolov5", "paddle", "none"]
AmpKind = Literal["bf16", "fp16", "none"]
Balance = Literal["none", "repeat_factor"]
OptimizerKind = Literal["sgd", "adamw"]
PipelineKind = Literal["workers", "device"]

PADDLE_PPYOLOV2_TOTAL_BATCH = 96  # ppyolov2_reader.yml batch_size 12 x 8 GPUs
PADDLE_YOLOV3_TOTAL_BATCH = 64  # yolov3_reader.yml batch_size 8 x 8 GPUs


@dataclass
class AugmentConfig:
    """Training augmentation for grayscale MRI; probabilities in [0, 1], strengths as stated.

    Attributes:
        mosaic: probability of a 4-image mosaic (YOLOv5 ``mosaic``).
        mixup: probability of blending with a second sample.
        mixup_beta: ``(alpha, beta)`` of the Beta distribution of the blend ratio
            (PP-YOLOv2 ``Mixup: {alpha: 1.5, beta: 1.5}``; YOLOv5 ``np.random.beta(32, 32)``).
        affine: probability of the random affine warp (always on in YOLOv5).
        degrees: maximum rotation in degrees (keep small: anatomy has an orientation).
        translate: maximum translation as a fraction of the image size.
        scale: scale gain range ``[1 - scale, 1 + scale]``.
        shear: maximum shear in degrees.
        brightness: multiplicative gain range ``[1 - b, 1 + b]`` (YOLOv5 ``hsv_v``).
        contrast: contrast gain range ``[1 - c, 1 + c]`` around the image mean.
        gamma: gamma drawn as ``exp(U(-g, g))``.
        intensity_prob: probability of each of brightness / contrast / gamma.
        hflip: probability of a horizontal flip. It swaps anterior and posterior on a sagittal
            slice, so it is off by default (set it explicitly to use it).
        crop: probability of a random IoU-constrained crop (PaddleDetection ``RandomCrop``).
        expand: probability of random zoom-out on a padded canvas (``RandomExpand``).
        expand_ratio: largest canvas / image side ratio of ``expand`` (Paddle: 4).
        min_box_size: boxes narrower or lower than this (pixels) after a transform are dropped.
        min_area_ratio: boxes keeping less than this fraction of their area are dropped
            (YOLOv5 ``box_candidates(area_thr=0.1)``).
        pad_value: gray level of padding / empty canvas (0: MRI background is dark).
        single_sequence: with T1/T2 pairs (the recipe's ``sequence_pairs``), the probability
            that one of the two augmented channels fills both, so that the model also reads a
            single slice (a study with one sequence, or an image file) as it will at diagnosis.
    """

    mosaic: float = 0.0
    mixup: float = 0.0
    mixup_beta: tuple[float, float] = (1.5, 1.5)
    affine: float = 1.0
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    brightness: float = 0.4
    contrast: float = 0.0
    gamma: float = 0.0
    intensity_prob: float = 1.0
    hflip: float = 0.0
    crop: float = 0.0
    expand: float = 0.0
    expand_ratio: float = 4.0
    min_box_size: float = 2.0
    min_area_ratio: float = 0.1
    pad_value: int = 0
    single_sequence: float = 0.25


@dataclass
class Recipe:
    """Everything the trainer needs besides the model and the data.

    Attributes:
        name: recipe name, stored in checkpoints and ``results.csv``.
        image_size: square training / evaluation size in pixels (multiple of 32).
        epochs: number of epochs.
        batch_size: images per step per process.
        nominal_batch: gradients are accumulated to about this many images per optimiser step
            (YOLOv5 ``nbs = 64``); ``None`` for no accumulation. Weight decay is scaled by
            ``batch * accumulate / nominal_batch`` as in YOLOv5 ``train.py``.
        lr0: initial learning rate (after warm-up).
        momentum, nesterov, weight_decay: SGD settings; weight decay is applied to conv / linear
            weights only (not to biases or normalisation weights).
        schedule: ``linear`` or ``cosine`` (YOLOv5, per epoch, down to ``lr0 * lrf``) or
            ``piecewise`` (PaddleDetection, x ``gamma`` at each epoch in ``milestones``).
        warmup_epochs: linear warm-up length in epochs (YOLOv5; at least ``warmup_min_iters``).
        warmup_iters: warm-up length in iterations (PaddleDetection); overrides ``warmup_epochs``.
        warmup_start_factor: lr factor at iteration 0 of warm-up for weights.
        warmup_bias_lr: YOLOv5 warms the bias group *down* from this lr; ``None`` treats biases
            like weights.
        warmup_momentum: momentum at iteration 0 of warm-up (YOLOv5); ``None`` keeps it fixed.
        ema: ``yolov5`` (decay * (1 - exp(-t / tau))), ``paddle`` (min(decay, (1+t)/(10+t)))
            or ``none``. The EMA weights are evaluated and saved.
        grad_clip: maximum gradient L2 norm, ``None`` to disable.
        amp: mixed precision on CUDA (``bf16`` or ``fp16`` with a GradScaler); ignored on CPU.
        multi_scale: ``(min, max)`` training sizes; each batch takes a random multiple of 32.
        balance: ``repeat_factor`` for LVIS repeat-factor sampling.
        repeat_threshold: the frequency threshold ``t`` of repeat-factor sampling.
        num_workers: DataLoader worker processes.
        eval_interval: evaluate every this many epochs (and always after the last).
        optimizer: ``sgd`` (YOLOv5, PaddleDetection) or ``adamw`` (``torch.optim.AdamW``,
            ``betas = (momentum, 0.999)``, decoupled weight decay on the ``weight`` group only;
            what Ultralytics' ``optimizer=auto`` picks for short schedules).
        shared_labels: how a loss that supports it (YOLOv5) treats one prediction that is the
            positive of boxes of different classes: ``reference`` (one-hot per box, as the
            reference) or ``union`` (multi-hot: the union of their classes); see
            :class:`lumbardx.models.loss_yolov5.YOLOv5Loss`.
        sequence_pairs: train and evaluate on a patient's co-registered T1 and T2 slices as
            one two-channel input (:class:`lumbardx.data.pairs.SequencePairs`; the model's
            three input channels are T1, T2 and their mean; a single slice is read as itself
            in all three, as without pairs). Needs the sequence of each image (a patients
            CSV with a ``sequence`` column).
        pipeline: ``workers`` (the CPU pipeline, :mod:`lumbardx.engine.pipeline`, in
            ``num_workers`` DataLoader processes) or ``device`` (the whole training set on the
            training device, batches augmented there with tensor operations,
            :mod:`lumbardx.engine.device_loader`; for a GPU, which the CPU pipeline cannot
            feed). Both draw from the same augmentation distributions.
        time_limit_s: stop after the epoch in which training (this call's epochs, evaluation
            included) passes this many seconds, ``None`` for no limit. The schedule is not
            shortened: the run ends early, as an interrupted one would, and ``results.csv``
            ends at that epoch (a budget guard for a leased machine, not a recipe choice).
        close_mosaic: the last this many epochs train without mosaic and mixup (Ultralytics
            ``close_mosaic``, default 10 in ``ultralytics/cfg/default.yaml``), so that the
            model ends on whole, undistorted slices as it will see them; 0 keeps them on.
        augment: augmentation settings.
    """

    name: str = "custom"
    image_size: int = 640
    epochs: int = 100
    batch_size: int = 16
    nominal_batch: int | None = None
    lr0: float = 0.01
    momentum: float = 0.937
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: Schedule = "linear"
    lrf: float = 0.01
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 3.0
    warmup_iters: int | None = None
    warmup_min_iters: int = 100
    warmup_start_factor: float = 0.0
    warmup_bias_lr: float | None = None
    warmup_momentum: float | None = None
    ema: EmaKind = "yolov5"
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    grad_clip: float | None = 10.0
    amp: AmpKind = "bf16"
    multi_scale: tuple[int, int] | None = None
    balance: Balance = "none"
    repeat_threshold: float = 0.3
    num_workers: int = 2
    eval_interval: int = 1
    optimizer: OptimizerKind = "sgd"
    pipeline: PipelineKind = "workers"
    time_limit_s: float | None = None
    close_mosaic: int = 0
    shared_labels: str = "reference"
    sequence_pairs: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.image_size % 32:
            raise ValueError(f"image_size {self.image_size} is not a multiple of 32")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.schedule not in ("linear", "cosine", "piecewise"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.multi_scale is not None and self.multi_scale[0] > self.multi_scale[1]:
            raise ValueError(f"multi_scale {self.multi_scale} has min > max")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r} (sgd or adamw)")
        if self.pipeline not in ("workers", "device"):
            raise ValueError(f"unknown pipeline {self.pipeline!r} (workers or device)")
        if self.shared_labels not in ("reference", "union"):
            raise ValueError(f"unknown shared_labels {self.shared_labels!r} (reference or union)")
        if not 0.0 <= self.augment.single_sequence <= 1.0:
            raise ValueError(f"augment.single_sequence must be in [0, 1], not "
                             f"{self.augment.single_sequence}")
        if self.time_limit_s is not None and not self.time_limit_s > 0:
            raise ValueError(f"time_limit_s must be positive, not {self.time_limit_s}")
        if self.close_mosaic < 0:
            raise ValueError(f"close_mosaic must be >= 0, not {self.close_mosaic}")

    def accumulate(self, world_size: int = 1) -> int:
        """Micro-batches per optimiser step (YOLOv5: ``max(round(nbs / batch), 1)``)."""
        if self.nominal_batch is None:
            return 1
        return max(round(self.nominal_batch / (self.batch_size * world_size)), 1)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python dict (tuples as lists), suitable for YAML, JSON and checkpoints."""
        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown recipe fields: {', '.join(sorted(unknown))}")
        values = dict(data)
        aug = values.pop("augment", {}) or {}
        if isinstance(aug, dict):
            aug_known = {f.name for f in fields(AugmentConfig)}
            bad = set(aug) - aug_known
            if bad:
                raise ValueError(f"unknown augment fields: {', '.join(sorted(bad))}")
            if "mixup_beta" in aug:
                aug["mixup_beta"] = tuple(aug["mixup_beta"])
            aug = AugmentConfig(**aug)
        for key in ("milestones", "multi_scale"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(augment=aug, **values)


def yolov5_recipe(image_size: int = 640, batch_size: int = 16, epochs: int = 100) -> Recipe:
    """YOLOv5 v7.0 ``hyp.scratch-low.yaml`` with ``train.py`` defaults."""
    return Recipe(
        name="yolov5-scratch-low",
        image_size=image_size,
        epochs=epochs,  # train.py --epochs 100
        batch_size=batch_size,  # train.py --batch-size 16
        nominal_batch=64,  # train.py nbs = 64
        lr0=0.01,  # hyp.scratch-low.yaml lr0
        lrf=0.01,  # lrf
        momentum=0.937,  # momentum
        nesterov=True,  # utils/torch_utils.py smart_optimizer: SGD(nesterov=True)
        weight_decay=5e-4,  # weight_decay
        schedule="linear",  # train.py: linear unless --cos-lr
        warmup_epochs=3.0,  # warmup_epochs
        warmup_min_iters=100,  # train.py nw = max(round(warmup_epochs * nb), 100)
        warmup_bias_lr=0.1,  # warmup_bias_lr
        warmup_momentum=0.8,  # warmup_momentum
        ema="yolov5",
        ema_decay=0.9999,  # utils/torch_utils.py ModelEMA(decay=0.9999, tau=2000)
        ema_tau=2000.0,
        grad_clip=10.0,  # train.py clip_grad_norm_(max_norm=10.0)
        augment=AugmentConfig(
            mosaic=1.0,  # mosaic
            mixup=0.0,  # mixup
            mixup_beta=(32.0, 32.0),  # utils/augmentations.py mixup: np.random.beta(32.0, 32.0)
            affine=1.0,  # random_perspective always applied
            degrees=0.0,  # degrees
            translate=0.1,  # translate
            scale=0.5,  # scale
            shear=0.0,  # shear
            brightness=0.4,  # hsv_v (value gain; hue/saturation do not apply to gray)
            hflip=0.0,  # fliplr is 0.5 in the reference; off here (anterior/posterior)
        ),
    )


def _paddle_recipe(
    name: str,
    base_lr: float,
    ref_total_batch: int,
    epochs: int,
    milestones: tuple[int, ...],
    image_size: int,
    batch_size: int,
    world_size: int,
    multi_scale: tuple[int, int],
    ref_size: int,
    ema: EmaKind,
) -> Recipe:
    total = batch_size * world_size
    lo, hi = (max(32, round(v * image_size / ref_size / 32) * 32) for v in multi_scale)
    return Recipe(
        name=name,
        image_size=image_size,
        epochs=epochs,
        batch_size=batch_size,
        lr0=base_lr * total / ref_total_batch,  # linear scaling rule to the actual total batch
        momentum=0.9,  # OptimizerBuilder Momentum 0.9
        nesterov=False,
        weight_decay=5e-4,  # regularizer L2 0.0005
        schedule="piecewise",
        milestones=milestones,
        gamma=0.1,  # PiecewiseDecay gamma 0.1
        warmup_iters=4000,  # LinearWarmup steps 4000
        warmup_start_factor=0.0,  # LinearWarmup start_factor 0.
        ema=ema,
        ema_decay=0.9998,  # ppyolov2_r50vd_dcn.yml ema_decay 0.9998
        grad_clip=35.0 if name.startswith("ppyolov2") else None,  # clip_grad_by_norm 35.
        multi_scale=(lo, hi),  # BatchRandomResize range, step 32, scaled to image_size
        augment=AugmentConfig(
            mixup=1.0,  # Mixup applied to every sample until mixup_epoch
            mixup_beta=(1.5, 1.5),  # Mixup alpha 1.5 beta 1.5
            affine=0.0,
            translate=0.0,
            scale=0.0,
            brightness=0.5,  # RandomDistort brightness [0.5, 1.5], prob 0.5
            contrast=0.5,  # RandomDistort contrast [0.5, 1.5], prob 0.5
            intensity_prob=0.5,
            expand=0.5,  # RandomExpand prob 0.5, ratio 4
            expand_ratio=4.0,
            crop=6 / 7,  # RandomCrop: 6 IoU thresholds + allow_no_crop
            hflip=0.0,  # RandomFlip 0.5 in the reference; off here (anterior/posterior)
        ),
    )


def ppyolov2_recipe(
    image_size: int = 640, batch_size: int = 12, epochs: int = 365, world_size: int = 1
) -> Recipe:
    """PP-YOLOv2 (``optimizer_365e.yml``, ``ppyolov2_reader.yml``), lr scaled to the batch."""
    return _paddle_recipe(
        "ppyolov2-365e",
        base_lr=0.005,  # optimizer_365e.yml base_lr (8 GPUs x 12 images)
        ref_total_batch=PADDLE_PPYOLOV2_TOTAL_BATCH,
        epochs=epochs,
        milestones=(round(epochs * 243 / 365),),  # milestone 243 of 365
        image_size=image_size,
        batch_size=batch_size,
        world_size=world_size,
        multi_scale=(320, 768),  # BatchRandomResize 320..768
        ref_size=640,  # EvalReader Resize 640
        ema="paddle",  # use_ema true
    )


def yolov3_recipe(
    image_size: int = 608, batch_size: int = 8, epochs: int = 270, world_size: int = 1
) -> Recipe:
    """YOLOv3 Darknet-53 (``optimizer_270e.yml``, ``yolov3_reader.yml``), lr scaled."""
    return _paddle_recipe(
        "yolov3-270e",
        base_lr=0.001,  # optimizer_270e.yml base_lr (8 GPUs x 8 images)
        ref_total_batch=PADDLE_YOLOV3_TOTAL_BATCH,
        epochs=epochs,
        milestones=(round(epochs * 216 / 270), round(epochs * 243 / 270)),  # 216, 243 of 270
        image_size=image_size,
        batch_size=batch_size,
        world_size=world_size,
        multi_scale=(320, 608),  # BatchRandomResize 320..608
        ref_size=608,  # EvalReader Resize 608
        ema="none",  # yolov3_darknet53.yml does not enable EMA
    )


def apply_small_data(recipe: Recipe, epochs: int = 300) -> Recipe:
    """Project defaults for training from scratch on a few hundred images (not a reference).

    Changes: ``epochs`` (300; milestones rescaled), warm-up of 3 epochs instead of 4000
    iterations (which would be ~70 epochs at ~55 iterations per epoch), the YOLOv5 EMA ramp
    ``tau`` shortened to 500 updates (2000 updates is ~30 epochs at nominal batch 64), a small
    rotation (3 degrees) and contrast / gamma jitter for scanner variation, and for the Paddle
    family an additional mild affine scale jitter. Repeat-factor sampling is switched on
    (threshold 0.3) because spondylolisthesis is about 30x rarer than normal discs (yolospine-dev:
    98 against 3,301 boxes, in about 50 of 832 images).

    For the YOLOv5 family also AdamW (``lr0`` 0.001429, ``betas`` (0.9, 0.999): what Ultralytics'
    ``optimizer=auto`` picks for fewer than 10,000 iterations, ``lr = 0.002 * 5 / (4 + nc)`` at
    3 classes) and ``close_mosaic`` 10 (Ultralytics' default). On fold 0 of yolospine-dev this
    took YOLOv5n from scratch (80 epochs, 384 px) from mAP@0.5 60.4 to 65.0 with the final
    weights, spondylolisthesis from 7.2 to 25.1 AP (``docs/training.md``, runs 1 and 3).
    """
    aug = replace(recipe.augment, degrees=3.0, contrast=max(recipe.augment.contrast, 0.3),
                  gamma=0.2)
    if recipe.schedule == "piecewise":
        aug = replace(aug, affine=0.5, scale=0.2, translate=0.05)
    ms = tuple(round(m * epochs / recipe.epochs) for m in recipe.milestones)
    return replace(
        recipe,
        name=recipe.name + "-small-data",
        epochs=epochs,
        milestones=ms,
        warmup_iters=None,
        warmup_epochs=3.0,
        ema_tau=500.0 if recipe.ema == "yolov5" else recipe.ema_tau,
        balance="repeat_factor",
        repeat_threshold=0.3,
        augment=aug,
        **(_YOLOV5_SMALL_DATA if recipe.name.startswith("yolov5") else {}),
    )


# ultralytics/engine/trainer.py build_optimizer(optimizer="auto"): AdamW(lr=0.002 * 5 / (4 + nc),
# momentum 0.9) below 10,000 iterations; ultralytics/cfg/default.yaml close_mosaic: 10
_YOLOV5_SMALL_DATA: dict[str, Any] = {"optimizer": "adamw", "lr0": 0.001429, "momentum": 0.9,
                                      "close_mosaic": 10}


def recipe_for(
    model_name: str,
    image_size: int = 640,
    batch_size: int | None = None,
    epochs: int | None = None,
    world_size: int = 1,
    small_data: bool = True,
) -> Recipe:
    """The recipe of a registered model name (``yolov5s``, ``yolov3``, ``ppyolov2-r18``, ...)."""
    if model_name.startswith("yolov5"):
        r = yolov5_recipe(image_size, batch_size or 16)
    elif model_name.startswith("ppyolov2"):
        r = ppyolov2_recipe(image_size, batch_size or 12, world_size=world_size)
    elif model_name.startswith("yolov3"):
        r = yolov3_recipe(image_size, batch_size or 8, world_size=world_size)
    else:
        raise ValueError(f"no recipe for model {model_name!r} (yolov5*, yolov3*, ppyolov2*)")
    if small_data:
        r = apply_small_data(r, epochs or 300)
    elif epochs is not None:
        ms = tuple(round(m * epochs / r.epochs) for m in r.milestones)
        r = replace(r, epochs=epochs, milestones=ms)
    return r
