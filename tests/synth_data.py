"""Small synthetic datasets for tests: ``from synth_data import two_per_patient``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def two_per_patient(root: Path, n: int = 8, seed: int = 5, **config: Any) -> Path:
    """``n`` synthetic 128-px images (:func:`lumbardx.synth.generate_dataset`, ``config`` more
    :class:`lumbardx.synth.SynthConfig` fields) in ``root``, with a ``patients.csv`` giving two
    images to each patient (``case_00000`` and ``case_00001`` are ``p0``...)."""
    from lumbardx.synth import SynthConfig, generate_dataset

    generate_dataset(root, n, seed=seed, config=SynthConfig(image_sizes=(128,), **config))
    (root / "patients.csv").write_text(
        "image,patient\n" + "".join(f"case_{i:05d}.png,p{i // 2}\n" for i in range(n)))
    return root
