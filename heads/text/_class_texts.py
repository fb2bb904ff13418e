"""Class weights from prompts: each class's prompts embedded by an image column's text tower
(through the store's text cache) and averaged, with what a head needs to compare the column's
stored image embeddings with them without the tower (the projection, the scale, the bias).

>>> ct = class_texts("flowers", ["daisy", "rose"], "clip-vit-b-16")
>>> ct.weights.shape, ct.projection.shape        # (2, 512), (512, 768): CLIP's visual projection
>>> Z = ct.project(X)                             # stored (N, 768) -> (N, 512), unit rows
>>> logits = ct.logit_scale * Z @ ct.weights.T    # CLIP's zero-shot logits
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

import embedstore
from embedstore.backbones import TextTower, text_tower
from embedstore.search import l2_normalize
from heads._errors import HeadsError
from heads.text._prompts import check_names, check_templates, class_prompts


@dataclass
class ClassTexts:
    """Class text weights in an image column's text space: what a head with
    ``HeadTags.text_prior`` takes as ``fit(text=...)``.

    ``weights`` ``(C, D)`` float32: row ``c`` the normalised mean of the unit embeddings of
    ``prompts[classes[c]]``; ``projection`` ``(D, D_image)`` float32: the map from the stored
    column into the text space (CLIP's visual projection; None: the column is already there,
    SigLIP); ``logit_scale`` (and SigLIP's ``logit_bias``): the model's own logits are
    ``logit_scale * cos (+ logit_bias)``; ``model``: the text tower's identity.
    """

    classes: list[str]
    weights: np.ndarray
    projection: np.ndarray | None
    logit_scale: float
    logit_bias: float | None = None
    prompts: dict[str, list[str]] = field(default_factory=dict)
    model: str = ""

    @property
    def image_dim(self) -> int:
        """The stored column's dimension these weights compare with."""
        p = self.projection
        return int(p.shape[1] if p is not None else self.weights.shape[1])

    def project(self, X: np.ndarray) -> np.ndarray:
        """Stored image embeddings ``(N, image_dim)`` -> unit rows ``(N, D)`` in the text
        space (the tower's ``project_images``, without the tower)."""
        X = np.asarray(X, dtype=np.float32)
        return l2_normalize(X if self.projection is None else X @ self.projection.T)


def class_texts(
    store: Any,
    classes: Sequence[str],
    backbone: str | None = None,
    *,
    templates: Sequence[str] | None = None,
    names: Mapping[str, Sequence[str]] | None = None,
    coarse: Mapping[str, str] | None = None,
    device: str | torch.device = "auto",
    tower: TextTower | None = None,
) -> ClassTexts:
    """The class weights of ``classes`` with the text tower of the image column ``backbone``
    (None: the store's only one): every template (default ``DEFAULT_TEMPLATES``) filled with
    every name of the class (``names[label]``, default the label with ``_`` as spaces; a
    ``{coarse}`` template with ``coarse[label]``), embedded through the store's text cache
    and averaged. ``tower``: one already built for that column (kept resident by a caller).
    """
    st = store if isinstance(store, embedstore.Store) else embedstore.connect(store, create=False)
    info = st.resolve_backbone(backbone)
    classes = [str(c) for c in classes]
    if not classes or len(set(classes)) != len(classes):
        raise HeadsError(f"class texts need distinct class names; got {len(classes)} names")
    tmpl, named, coarse = check_templates(templates), check_names(names), dict(coarse or {})
    prompts = {c: class_prompts(c, tmpl, named.get(c), coarse.get(c)) for c in classes}
    tower = tower if tower is not None else text_tower(info)
    flat = list(dict.fromkeys(p for ps in prompts.values() for p in ps))
    E = embedstore.embed_texts(st, flat, info.column, device=device, tower=tower)  # (P, D)
    row = {p: i for i, p in enumerate(flat)}
    W = np.stack([E[[row[p] for p in prompts[c]]].mean(axis=0) for c in classes])  # (C, D)
    tower.load()  # the scale, bias and projection: the model's own numbers
    assert tower.logit_scale is not None  # set by every tower's load
    return ClassTexts(
        classes=classes,
        weights=l2_normalize(W).astype(np.float32),
        projection=tower.image_projection,
        logit_scale=float(tower.logit_scale),
        logit_bias=tower.logit_bias,
        prompts=prompts,
        model=tower.identity,
    )


def names_from_columns(
    labels: np.ndarray, table: Mapping[str, np.ndarray], columns: Sequence[str]
) -> dict[str, list[str]]:
    """``{label: [name, ...]}``: every distinct non-empty value of ``columns`` (e.g.
    ``scientific_name``, ``common_name``) on the rows of each label, in order of the columns."""
    out: dict[str, list[str]] = {}
    for col in columns:
        for lab, v in zip(labels, table[col], strict=True):
            if lab is None or v is None or (isinstance(v, float) and np.isnan(v)):
                continue
            name = str(v).strip()
            if name:
                out.setdefault(str(lab), [])
                if name not in out[str(lab)]:
                    out[str(lab)].append(name)
    return out


def coarse_from_column(
    labels: np.ndarray, table: Mapping[str, np.ndarray], column: str
) -> dict[str, str]:
    """``{label: coarse group}``: the most frequent non-empty value of ``column`` on the rows
    of each label (its first in row order on a tie)."""
    counts: dict[str, dict[str, int]] = {}
    for lab, v in zip(labels, table[column], strict=True):
        if lab is None or v is None or (isinstance(v, float) and np.isnan(v)) or not str(v).strip():
            continue
        c = counts.setdefault(str(lab), {})
        c[str(v).strip()] = c.get(str(v).strip(), 0) + 1
    return {lab: max(c, key=lambda k: c[k]) for lab, c in counts.items()}
