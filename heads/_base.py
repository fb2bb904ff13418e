"""The head protocol: what training, saving and loading ask of a head, declared, never sniffed.

A head is a scikit-learn classifier (``fit(X, y) -> self``, ``predict``, ``predict_proba`` with
columns following ``classes_``, ``decision_function`` as scikit-learn has it: the ``(N,)`` margin
for two classes) that also gives

- ``logits(X, fields=None) -> (N, C)``: one column per class, for two classes as well (what the
  unknown detectors, the ensembles and the runs read);
- ``__head_tags__() -> HeadTags``: its capabilities (scikit-learn's ``__sklearn_tags__`` idea);
- ``training_record() -> TrainingRecord``: the history of an iterative fit and its best epoch;
- ``get_state() -> (config, tensors)`` and ``HeadClass.from_state(config, tensors)``: the round
  trip through a run folder (a JSON-able config, safetensors; nothing pickled).

``fit`` takes keyword inputs every head accepts and may ignore: ``fields=``, ``aux=``, ``X_val=``,
``y_val=``, ``fields_val=``, ``progress=`` (a :data:`Progress` callback), and ``X_views=`` where
``HeadTags.takes_views``, ``sample_weight=`` where ``HeadTags.sample_weight``, ``soft_targets=``
and ``soft_temperature=`` where ``HeadTags.soft_targets``, ``text=``
(:class:`heads.text.ClassTexts`) where ``HeadTags.text_prior``. :class:`HeadMixin` gives the
defaults; ``heads.train`` reads :func:`head_tags` and nothing else about a head.
``docs/heads.md`` has a complete example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

Progress = Callable[[int, int, Mapping[str, Any]], None]
"""``progress(done, total, info)``, called by ``fit`` after each epoch: epochs done, the planned
total (equal to ``done`` when training stops early) and what to show (``train_loss``,
``val_macro_f1`` ...; ``best_epoch`` when it stops early)."""


@dataclass(frozen=True)
class HeadTags:
    """What a head can do and needs; ``heads.train`` asks these, never the head's attributes."""

    arch: str | None = None  # "linear" / "mlp" / "transformer" for the neural heads
    takes_views: bool = False  # fit(X_views=(N, V, D)) draws views itself (else: more rows)
    multi_k: bool = False  # predict_proba_multi_k(X) -> {k: (N, C)}: several k from one search
    token_fusion: bool = False  # a ``token_dims`` setting: one token per backbone when unset
    iterative: bool = False  # an ``epochs`` setting; the refit trains the folds' median best
    needs_refit: bool = False  # its run predicts with the refit on every fold (not the folds)
    # settings a fold's copy gets when ``needs_refit`` (e.g. prototypes of the training part)
    fold_settings: Mapping[str, Any] = field(default_factory=dict)
    sample_weight: bool = False  # fit(sample_weight=(N,)): rows count by their weight
    # fit(soft_targets=(N, C), soft_temperature=T): learns another model's probabilities
    # (what ``heads distill`` trains a head with)
    soft_targets: bool = False
    # fit(text=heads.text.ClassTexts): class weights from prompts, which heads.train builds with
    # the column's text tower; such a head fits with no labelled row too (X (0, D), y (0,))
    text_prior: bool = False


@dataclass
class TrainingRecord:
    """An iterative fit's history (one dict per epoch) and its best epoch (None: not iterative);
    ``chosen``: what the fit chose on its own out-of-fold (e.g. the zero-shot head's blend)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    chosen: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Head(Protocol):
    """The protocol every registered head follows (see the module docstring); a fitted head
    also has ``classes_`` (``(C,)``, the columns of ``logits`` and ``predict_proba``)."""

    def __head_tags__(self) -> HeadTags: ...

    def fit(self, X: Any, y: Any, **fit_kw: Any) -> Head: ...

    def predict(self, X: Any) -> np.ndarray: ...

    def predict_proba(self, X: Any) -> np.ndarray: ...

    def decision_function(self, X: Any, fields: Any = None) -> np.ndarray: ...

    def logits(self, X: Any, fields: Any = None) -> np.ndarray: ...

    def training_record(self) -> TrainingRecord: ...

    def get_state(self) -> tuple[dict[str, Any], dict[str, Any]]: ...

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, Any]) -> Head: ...

    @classmethod
    def setting_names(cls) -> list[str]: ...


class HeadMixin:
    """Defaults of the protocol: no special capabilities, no history; ``predict_proba``
    (softmax), ``predict`` (argmax) and scikit-learn's ``decision_function`` (the margin for two
    classes) from :meth:`logits`."""

    HEAD_TAGS: ClassVar[HeadTags] = HeadTags()
    classes_: np.ndarray  # set by ``fit`` (or ``from_state``) in each head

    def __head_tags__(self) -> HeadTags:
        return self.HEAD_TAGS

    def training_record(self) -> TrainingRecord:
        return TrainingRecord()

    def logits(self, X: Any, fields: Any = None) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict_proba(self, X: Any, fields: Any = None) -> np.ndarray:
        """Softmax of :meth:`logits` ``(N, C)``, columns following ``classes_``."""
        z = np.asarray(self.logits(X, fields), dtype=np.float64)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def predict(self, X: Any, fields: Any = None) -> np.ndarray:
        """The class of the largest logit ``(N,)`` (``logits`` first: it checks the fit)."""
        best = np.asarray(self.logits(X, fields)).argmax(axis=1)  # (N,)
        return self.classes_[best]

    def decision_function(self, X: Any, fields: Any = None) -> np.ndarray:
        """scikit-learn's decision function: ``(N, C)`` logits, or for two classes the ``(N,)``
        margin ``logit[1] - logit[0]`` (positive: ``classes_[1]``). :meth:`logits` keeps
        the two columns."""
        z = self.logits(X, fields)
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    @classmethod
    def setting_names(cls) -> list[str]:
        """The head's settings (its ``__init__`` keywords, scikit-learn's parameters)."""
        return list(cls._get_param_names())  # type: ignore[attr-defined]


def head_tags(head: Any) -> HeadTags:
    """The declared capabilities of ``head`` (an instance or a class of the protocol)."""
    cls: Any = head  # a class of the protocol: its HEAD_TAGS (``type`` does not declare it)
    tags = head.__head_tags__() if not isinstance(head, type) else cls.HEAD_TAGS
    if not isinstance(tags, HeadTags):
        raise TypeError(f"{type(head).__name__}.__head_tags__() must return a HeadTags")
    return tags


class EpochBar:
    """A :data:`Progress` callback drawing a tqdm bar over epochs (``close()`` at the end)."""

    def __init__(self, desc: str) -> None:
        self.desc = desc
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int, info: Mapping[str, Any]) -> None:
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="epoch")
        stopped = total < self.bar.total  # stopped early: end the bar at 100%, complete
        self.bar.total = total
        self.bar.update(done - self.bar.n)
        if stopped:
            self.bar.set_postfix_str(f"stopped at epoch {done}, best {info.get('best_epoch')}")
        else:
            self.bar.set_postfix({k: f"{v:.4f}" for k, v in info.items() if isinstance(v, float)})

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
