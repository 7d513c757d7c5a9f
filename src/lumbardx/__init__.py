"""lumbardx: normal discs, disc herniation and spondylolisthesis on sagittal lumbar spine MRI.

Decision support for research and teaching; not a diagnosis.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
