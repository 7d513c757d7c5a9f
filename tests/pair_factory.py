"""A tiny annotated dataset of T1/T2 pairs for tests (synthetic slices, no real data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def pair_dataset(root: Path, n: int, p_listhesis: float | None = None) -> Path:
    """``n`` synthetic slices (T2) plus a T1 of each (inverted contrast, the same boxes): ``n``
    patients ``p0``, ``p1``... of two images each, in VOC format with a patients CSV;
    ``p_listhesis`` as :class:`lumbardx.synth.SynthConfig` (default: its own)."""
    from PIL import Image

    from lumbardx.synth import SynthConfig, generate_dataset

    extra = {} if p_listhesis is None else {"p_listhesis": p_listhesis}
    generate_dataset(root, n, seed=9, config=SynthConfig(image_sizes=(96,), **extra))
    rows = ["image,patient,sequence"]
    for i in range(n):
        name = f"case_{i:05d}"
        img = np.asarray(Image.open(root / "images" / f"{name}.png").convert("L"))
        Image.fromarray(255 - img).save(root / "images" / f"{name}_t1.png")
        xml = (root / "annotations" / f"{name}.xml").read_text()
        (root / "annotations" / f"{name}_t1.xml").write_text(
            xml.replace(f"{name}.png", f"{name}_t1.png"))
        rows += [f"{name}.png,p{i},T2", f"{name}_t1.png,p{i},T1"]  # one patient per case
    (root / "patients.csv").write_text("\n".join(rows) + "\n")
    return root
