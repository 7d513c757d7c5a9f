"""Synthetic T2 mid-sagittal lumbar spine MRI with exact ground truth.

Procedural anatomy (T4-L5 vertebrae and the sacrum along a lordotic curve, discs, canal, cord,
posterior elements, soft tissues), herniations with known posterior extent (mm) and type, and
spondylolisthesis with known Meyerding slip; boxes follow the yolospine-dev conventions.

>>> import numpy as np
>>> case = generate_case(np.random.default_rng(0), SynthConfig())
>>> case.image.dtype, case.truth["levels_in_view"][-1]  # doctest: +SKIP
"""

from lumbardx.synth.anatomy import SynthConfig, meyerding_grade
from lumbardx.synth.case import SynthCase, generate_case, voi_linear
from lumbardx.synth.dicom_series import write_dicom_series
from lumbardx.synth.render import TISSUES
from lumbardx.synth.writer import generate_dataset

__all__ = ["SynthCase", "SynthConfig", "TISSUES", "generate_case", "generate_dataset",
           "meyerding_grade", "voi_linear", "write_dicom_series"]
