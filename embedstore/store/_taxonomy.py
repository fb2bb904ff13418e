"""A store's taxonomy: the ranks above its labels (species < genus < family), kept in the
store's schema metadata so that every run trained on the store knows the tree.

It comes from a taxonomy file (``embedstore ingest --taxonomy FILE`` or ``embedstore taxonomy
FILE``: a CSV whose header names the ranks, finest first, one row per label) or from metadata
columns that name a rank per image (``embedstore taxonomy --rank coarse_class``: grocery81's
``metadata.csv``). Either way it is checked to be a tree: a label (or a genus) under two
parents is refused, naming the file or column and the names at fault.

>>> tax = set_taxonomy("store", "taxonomy.csv").taxonomy   # species,genus,family
>>> tax.ranks, tax.parent("Amanita muscaria", "genus")
(('species', 'genus', 'family'), 'Amanita')
"""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedstore._results import Result
from embedstore.errors import BadInput
from embedstore.store._store import Store, connect

META_NAME = "taxonomy"  # the table metadata key (``embedstore.taxonomy``)
TAXONOMY_FORMAT = 1
_SHOWN = 5  # names quoted in a message before "..."


class TaxonomyError(BadInput):
    """A taxonomy that cannot be used (not a tree, a rank missing); the message names the file
    or column and the labels at fault."""


@dataclass(frozen=True)
class Taxonomy:
    """Ranks above the labels: ``ranks`` finest first (``ranks[0]`` names the labels themselves,
    e.g. ``species`` or ``label``) and, per label, its parent at each coarser rank in order.

    >>> Taxonomy(("label", "coarse"), {"Granny-Smith": ("Apple",)}).parent("Granny-Smith", "coarse")
    'Apple'
    """

    ranks: tuple[str, ...]
    parents: dict[str, tuple[str, ...]]
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.ranks) < 2:
            raise TaxonomyError(
                f"{self.source or 'taxonomy'}: needs the label rank and at least one coarser "
                f"rank, not {list(self.ranks)}"
            )
        if len(set(self.ranks)) < len(self.ranks):
            raise TaxonomyError(f"{self.source or 'taxonomy'}: a rank is named twice: {self.ranks}")

    @property
    def labels(self) -> list[str]:
        return sorted(self.parents)

    def parent(self, label: str, rank: str) -> str:
        """``label``'s name at ``rank`` (``ranks[0]``: the label itself)."""
        r = self.rank_index(rank)
        return label if r == 0 else self.parents[label][r - 1]

    def rank_index(self, rank: str) -> int:
        if rank not in self.ranks:
            raise TaxonomyError(f"rank {rank!r} is not in the taxonomy; its ranks: {self.ranks}")
        return self.ranks.index(rank)

    def names(self, rank: str) -> list[str]:
        """Every name at ``rank``, sorted."""
        r = self.rank_index(rank)
        return self.labels if r == 0 else sorted({p[r - 1] for p in self.parents.values()})

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TAXONOMY_FORMAT,
            "ranks": list(self.ranks),
            "parents": {k: list(v) for k, v in sorted(self.parents.items())},
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Taxonomy:
        return cls(
            tuple(d["ranks"]),
            {str(k): tuple(v) for k, v in d["parents"].items()},
            str(d.get("source", "")),
        )


@dataclass
class TaxonomySummary(Result):
    """A store's taxonomy as set or read: its ranks, the names at each, and what does not fit
    (labels of the store it lacks, labels it has that the store does not)."""

    store: str
    ranks: list[str]
    names_per_rank: dict[str, int]
    source: str
    missing_labels: list[str] = field(default_factory=list)
    extra_labels: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    taxonomy: Taxonomy | None = None

    def items_(self) -> dict[str, Any]:
        out = {k: v for k, v in super().items_().items() if k != "taxonomy"}
        out["parents"] = None if self.taxonomy is None else self.taxonomy.to_dict()["parents"]
        return out


# ---------------------------------------------------------------------------- building one


def read_taxonomy_file(path: str | os.PathLike) -> Taxonomy:
    """A taxonomy from a CSV (or ``.tsv``): a header naming the ranks, finest first
    (``species,genus,family``; the first column holds the store's labels), one row per label.
    A label listed twice with other parents, or a name under two parents, is refused.

    >>> read_taxonomy_file("taxonomy.csv").ranks
    ('species', 'genus', 'family')
    """
    p = Path(path)
    if not p.is_file():
        raise TaxonomyError(f"{p}: taxonomy file not found")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f, delimiter="\t" if p.suffix == ".tsv" else ",")]
    except (UnicodeDecodeError, csv.Error) as e:
        raise TaxonomyError(f"{p}: cannot read the taxonomy ({e}); give a UTF-8 CSV") from e
    rows = [[c.strip() for c in r] for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2 or len(rows[0]) < 2:
        raise TaxonomyError(
            f"{p}: a taxonomy needs a header naming the ranks, finest first (e.g. "
            "species,genus,family), and one row per label"
        )
    ranks = tuple(rows[0])
    if any(not r for r in ranks):
        raise TaxonomyError(f"{p}: a column of the header has no name; name every rank")
    seen: dict[str, tuple[tuple[str, ...], int]] = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(ranks) or not all(row):
            raise TaxonomyError(
                f"{p}: line {n} has {sum(bool(c) for c in row)} of the {len(ranks)} names "
                f"({', '.join(ranks)}); give every rank of every label"
            )
        label, parents = row[0], tuple(row[1:])
        if label in seen and seen[label][0] != parents:
            raise TaxonomyError(
                f"{p}: label {label!r} has two parents: {' < '.join(seen[label][0])} (line "
                f"{seen[label][1]}) and {' < '.join(parents)} (line {n}); keep one"
            )
        seen.setdefault(label, (parents, n))
    tax = Taxonomy(ranks, {k: v for k, (v, _) in seen.items()}, str(p))
    check_tree(tax)
    return tax


def taxonomy_from_columns(store: Store | str | os.PathLike, ranks: list[str]) -> Taxonomy:
    """A taxonomy from metadata columns naming each image's parent at a rank (finest first,
    e.g. ``["coarse_class"]`` or ``["genus", "family"]``): every labelled image of a label must
    agree. The labels' rank is called ``label``."""
    st = store if isinstance(store, Store) else connect(store, create=False)
    if not ranks:
        raise TaxonomyError("--rank: name at least one metadata column holding a coarser rank")
    missing = [c for c in ranks if not st.has_column(c)]
    if missing:
        raise TaxonomyError(f"{st.path}: no column(s) {', '.join(missing)} to read ranks from")
    t = st.read(["label", *ranks], labelled=True).to_pydict()
    parents: dict[str, tuple[str, ...]] = {}
    for col in ranks:
        values: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for label, v in zip(t["label"], t[col], strict=True):
            if v is not None and str(v).strip():
                values[label][str(v).strip()] += 1
        unnamed = sorted(set(t["label"]) - set(values))
        if unnamed:
            raise TaxonomyError(
                f"{st.path}: column {col!r} names no {col} for label(s) {_quote(unnamed)}; "
                "fill it in the metadata file and ingest again"
            )
        split = {k: v for k, v in values.items() if len(v) > 1}
        if split:
            k, v = sorted(split.items())[0]
            counts = ", ".join(f"{name} ({n} images)" for name, n in sorted(v.items()))
            raise TaxonomyError(
                f"{st.path}: column {col!r} gives {len(split)} label(s) two or more parents, "
                f"e.g. {k!r}: {counts}; correct the metadata so each label has one"
            )
        for label, v in values.items():
            parents[label] = (*parents.get(label, ()), next(iter(v)))
    tax = Taxonomy(("label", *ranks), parents, "columns " + ", ".join(ranks))
    check_tree(tax)
    return tax


def check_tree(tax: Taxonomy) -> None:
    """TaxonomyError unless each name at a rank has one parent at the next rank."""
    for r in range(1, len(tax.ranks) - 1):
        up: dict[str, set[str]] = defaultdict(set)
        for p in tax.parents.values():
            up[p[r - 1]].add(p[r])
        bad = sorted((k, v) for k, v in up.items() if len(v) > 1)
        if bad:
            name, above = bad[0]
            raise TaxonomyError(
                f"{tax.source}: {tax.ranks[r]} {name!r} is under two {tax.ranks[r + 1]} names "
                f"({', '.join(sorted(above))}); a taxonomy is a tree, so give it one"
            )


# ---------------------------------------------------------------------------- the store's


def read_taxonomy(store: Store | str | os.PathLike) -> Taxonomy | None:
    """The store's taxonomy (None without one)."""
    st = store if isinstance(store, Store) else connect(store, create=False)
    d = st.meta.table_metadata().get(META_NAME)
    return None if d is None else Taxonomy.from_dict(d)


def set_taxonomy(
    store: Store | str | os.PathLike | None,
    file: str | os.PathLike | Taxonomy | None = None,
    *,
    ranks: list[str] | tuple[str, ...] = (),
    clear: bool = False,
) -> TaxonomySummary:
    """Set the store's taxonomy from ``file`` (see :func:`read_taxonomy_file`) or from the
    metadata columns ``ranks`` (see :func:`taxonomy_from_columns`); ``clear`` removes it; with
    none of them, the taxonomy it has. Runs trained afterwards learn it.

    >>> set_taxonomy("grocery", ranks=["coarse_class"]).names_per_rank
    {'label': 81, 'coarse_class': 43}
    """
    st = store if isinstance(store, Store) else connect(store, create=False)
    if sum([file is not None, bool(ranks), clear]) > 1:
        raise TaxonomyError("give a taxonomy FILE, --rank columns or --clear, one of them")
    if clear:
        if st.exists:
            with st.writing("taxonomy --clear"):
                st.meta.drop_table_metadata(META_NAME)
        return TaxonomySummary(str(st.path), [], {}, "")
    if file is not None:
        tax = file if isinstance(file, Taxonomy) else read_taxonomy_file(file)
    elif ranks:
        tax = taxonomy_from_columns(st, list(ranks))
    else:
        have = read_taxonomy(st)
        if have is None:
            raise TaxonomyError(
                f"{st.path}: the store has no taxonomy; set one with `embedstore taxonomy "
                f"FILE --store {st.path}` or `--rank COLUMN`"
            )
        return summarize(st, have)
    if not st.exists:
        raise TaxonomyError(f"{st.path}: the store is empty; ingest images first")
    with st.writing("taxonomy"):
        st.meta.set_table_metadata({META_NAME: tax.to_dict()})
    return summarize(st, tax)


def summarize(st: Store, tax: Taxonomy) -> TaxonomySummary:
    """What :func:`set_taxonomy` reports: the ranks, the names at each, what does not fit."""
    labels = {v for v in st.read(["label"], labelled=True).column("label").to_pylist()}
    missing = sorted(labels - set(tax.parents))
    extra = sorted(set(tax.parents) - labels)
    warnings = []
    if missing:
        warnings.append(
            f"{len(missing)} label(s) of the store are not in the taxonomy ({_quote(missing)}): "
            "runs on them cannot answer at coarser ranks until they are added"
        )
    return TaxonomySummary(
        str(st.path),
        list(tax.ranks),
        {r: len(tax.names(r)) for r in tax.ranks},
        tax.source,
        missing,
        extra,
        warnings,
        tax,
    )


def _quote(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")
