"""lumbardx: normal discs, disc herniation and spondylolisthesis on sagittal lumbar spine MRI.

Decision support for research and teaching; not a diagnosis.
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lumbardx.diagnosis import Diagnoser, diagnose

__all__ = ["Diagnoser", "__version__", "diagnose"]


def __getattr__(name: str) -> Any:
    """``lumbardx.diagnose`` and ``lumbardx.Diagnoser``, imported on first use so that
    ``import lumbardx`` stays light."""
    if name in ("diagnose", "Diagnoser"):
        from lumbardx import diagnosis

        return getattr(diagnosis, name)
    raise AttributeError(f"module 'lumbardx' has no attribute {name!r}")
