"""Class vocabularies and mappings from a source's class names to lumbardx's classes.

Two mappings are built in:

* ``study`` -- the three classes of Ke et al. (2025): ``normal``, ``herniation``,
  ``spondylolisthesis``. Source names are matched case-insensitively against known aliases
  (e.g. the yolospine classes ``Normal IVD`` -> normal, ``Lumbar Disc Bulge (LDB)`` and
  ``Thoracic Disc Bulge (TDB)`` -> herniation, ``Spondylolisthesis`` -> spondylolisthesis);
  other source classes are dropped.
* ``study+ddd`` -- the study's three classes, and a disc labelled only ``Degenerative Disc
  Disease`` (a ``DDD`` box that no study-class box overlaps at IoU >= :data:`FALLBACK_IOU`)
  counts as ``normal``: a disc without herniation or slip. Some datasets (yolospine) label a
  degenerated disc with a DDD box *instead of* a disc box, and under ``study`` such a disc is
  background to a detector.
* ``study+ddd-ignore`` -- the study's three classes, and a disc labelled only ``Degenerative
  Disc Disease`` (as above) becomes a region the training loss ignores: neither a box to find
  nor background (:data:`IGNORE_LABEL`, :attr:`lumbardx.data.boxes.Sample.ignore`).
  Evaluation does not count it.
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

#: ``--classes`` help of the commands that read a dataset.
CLASSES_HELP = ("Class mapping: study|study+ddd|study+ddd-ignore|all (study+ddd: a disc labelled "
                "only degenerative disc disease counts as normal; study+ddd-ignore: the "
                "training loss ignores it).")

#: Label of a region the training loss ignores (no box target, not background); such boxes
#: are kept apart from the class boxes (:attr:`lumbardx.data.boxes.Sample.ignore`) and carry
#: this label only inside the training pipeline (:func:`lumbardx.engine.pipeline.sample_arrays`).
IGNORE_LABEL = -2

#: Fallback target name (:attr:`ClassMap.fallback`) of a box that becomes an ignored region.
IGNORED = "(ignored)"

#: Source names (lower-cased) of degenerative disc disease boxes.
DEGENERATION_ALIASES: frozenset[str] = frozenset({
    "degenerative disc disease (ddd)", "degenerative disc disease", "ddd", "degeneration"})

#: A fallback box (:attr:`ClassMap.fallback`) overlapping a mapped box at this IoU or more is
#: the same disc, and dropped.
FALLBACK_IOU = 0.3


@dataclass
class ClassMap:
    """Maps source class names to target class names and indices.

    Attributes:
        names: target class names; a target's index is its position here.
        mapping: source name -> target name; a source name absent from ``mapping`` is dropped
            when ``keep_unmapped`` is false, and kept under its own name otherwise.
        keep_unmapped: ``True`` for the ``all`` mapping.
        fallback: lower-cased source name -> target name for boxes kept only where no box
            mapped by ``mapping`` overlaps them at IoU >= :data:`FALLBACK_IOU`
            (:func:`lumbardx.data.dataset.map_annotation`; ``study+ddd``).
    """

    names: list[str]
    mapping: dict[str, str] = field(default_factory=dict)
    keep_unmapped: bool = False
    fallback: dict[str, str] = field(default_factory=dict)

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

    def fallback_index(self, source_name: str) -> int | None:
        """The target class index of a fallback box named ``source_name``
        (:attr:`fallback`), :data:`IGNORE_LABEL` when its fallback is :data:`IGNORED`, or
        ``None`` when the name has none."""
        name = self.fallback.get(source_name.strip().lower())
        if name == IGNORED:
            return IGNORE_LABEL
        return None if name is None else self.names.index(name)


def study_map() -> ClassMap:
    """The study's three-class mapping (normal, herniation, spondylolisthesis)."""
    return ClassMap(names=list(STUDY_CLASSES), mapping=dict(STUDY_ALIASES))


def study_ddd_map() -> ClassMap:
    """The study's classes, with discs labelled only degenerative disc disease as ``normal``
    (module docstring, ``study+ddd``)."""
    return ClassMap(names=list(STUDY_CLASSES), mapping=dict(STUDY_ALIASES),
                    fallback={alias: "normal" for alias in sorted(DEGENERATION_ALIASES)})


def study_ddd_ignore_map() -> ClassMap:
    """The study's classes, with discs labelled only degenerative disc disease as regions the
    training loss ignores (module docstring, ``study+ddd-ignore``)."""
    return ClassMap(names=list(STUDY_CLASSES), mapping=dict(STUDY_ALIASES),
                    fallback={alias: IGNORED for alias in sorted(DEGENERATION_ALIASES)})


def all_map(source_names: Iterable[str] = ()) -> ClassMap:
    """Keep every source class under its own name, in the order given (new ones appended)."""
    names = list(dict.fromkeys(source_names))
    return ClassMap(names=names, mapping={n: n for n in names}, keep_unmapped=True)


def build_class_map(kind: str | Mapping[str, str], source_names: Iterable[str] = ()) -> ClassMap:
    """Build a class map by name (``"study"``, ``"all"``, ...) or from an explicit mapping.

    Args:
        kind: ``"study"``, ``"study+ddd"``, ``"study+ddd-ignore"``, ``"all"``, or a mapping
            source name -> target name.
        source_names: the source's class names in order (used by ``"all"``).
    """
    if isinstance(kind, Mapping):
        targets = list(dict.fromkeys(kind.values()))
        return ClassMap(names=targets, mapping=dict(kind))
    if kind == "study":
        return study_map()
    if kind == "study+ddd":
        return study_ddd_map()
    if kind == "study+ddd-ignore":
        return study_ddd_ignore_map()
    if kind == "all":
        return all_map(source_names)
    raise ValueError(f"unknown class mapping {kind!r}: use 'study', 'study+ddd', "
                     "'study+ddd-ignore', 'all' or a mapping")
