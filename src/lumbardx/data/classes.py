"""Class vocabularies and mappings from a source's class names to lumbardx's classes.

Two mappings are built in:

* ``study`` -- the three classes of Ke et al. (2025): ``normal``, ``herniation``,
  ``spondylolisthesis``. Source names are matched case-insensitively against known aliases
  (e.g. the yolospine classes ``Normal IVD`` -> normal, ``Lumbar Disc Bulge (LDB)`` and
  ``Thoracic Disc Bulge (TDB)`` -> herniation, ``Spondylolisthesis`` -> spondylolisthesis);
  other source classes are dropped.
* ``all`` -- keep every class of the source under its own name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

STUDY_CLASSES: tuple[str, ...] = ("normal", "herniation", "spondylolisthesis")

# Lower-cased source names (and common abbreviations) recognised for the study classes.
STUDY_ALIASES: dict[str, str] = {
    "normal": "normal",
    "normal ivd": "normal",
    "normal disc": "normal",
    "ivd": "normal",
    "herniation": "herniation",
    "disc herniation": "herniation",
    "bulge": "herniation",
    "ivd bulge": "herniation",
    "disc bulge": "herniation",
    "lumbar disc bulge (ldb)": "herniation",
    "ldb": "herniation",
    "thoracic disc bulge (tdb)": "herniation",
    "tdb": "herniation",
    "spondylolisthesis": "spondylolisthesis",
    "slip": "spondylolisthesis",
}


@dataclass
class ClassMap:
    """Maps source class names to target class names and indices.

    Attributes:
        names: target class names; a target's index is its position here.
        mapping: source name -> target name; a source name absent from ``mapping`` is dropped
            when ``keep_unmapped`` is false, and kept under its own name otherwise.
        keep_unmapped: ``True`` for the ``all`` mapping.
    """

    names: list[str]
    mapping: dict[str, str] = field(default_factory=dict)
    keep_unmapped: bool = False

    def target(self, source_name: str) -> str | None:
        """The target class name for ``source_name``, or ``None`` when it is dropped."""
        if source_name in self.mapping:
            return self.mapping[source_name]
        key = source_name.strip().lower()
        if key in self.mapping:
            return self.mapping[key]
        if self.keep_unmapped:
            if source_name not in self.names:
                self.names.append(source_name)
            return source_name
        return None

    def index(self, source_name: str) -> int | None:
        """The target class index for ``source_name``, or ``None`` when it is dropped."""
        name = self.target(source_name)
        return None if name is None else self.names.index(name)


def study_map() -> ClassMap:
    """The study's three-class mapping (normal, herniation, spondylolisthesis)."""
    return ClassMap(names=list(STUDY_CLASSES), mapping=dict(STUDY_ALIASES))


def all_map(source_names: Iterable[str] = ()) -> ClassMap:
    """Keep every source class under its own name, in the order given (new ones appended)."""
    names = list(dict.fromkeys(source_names))
    return ClassMap(names=names, mapping={n: n for n in names}, keep_unmapped=True)


def build_class_map(kind: str | Mapping[str, str], source_names: Iterable[str] = ()) -> ClassMap:
    """Build a class map by name (``"study"`` or ``"all"``) or from an explicit mapping.

    Args:
        kind: ``"study"``, ``"all"``, or a mapping source name -> target name.
        source_names: the source's class names in order (used by ``"all"``).
    """
    if isinstance(kind, Mapping):
        targets = list(dict.fromkeys(kind.values()))
        return ClassMap(names=targets, mapping=dict(kind))
    if kind == "study":
        return study_map()
    if kind == "all":
        return all_map(source_names)
    raise ValueError(f"unknown class mapping {kind!r}: use 'study', 'all' or a mapping")
