"""Linear, MLP and transformer heads on frozen embeddings, and their on-device trainer.

All three are one scikit-learn estimator, :class:`NeuralHead`, with a different ``arch``:

- ``linear``: LayerNorm(embedding) ++ metadata fields -> Dropout -> classifier.
- ``mlp``: LayerNorm(embedding) ++ metadata fields -> Linear -> GELU -> Dropout -> classifier.
- ``transformer``: MetaFormer-style fusion. The embedding is one token, each metadata field its
  own token, plus a learned CLS token; a small pre-norm ``nn.TransformerEncoder`` mixes them and
  the classifier reads the CLS output.

The classifier is ``nn.Linear``, or cosines to (sub-center) class weights when the loss asks for
it (``loss.classifier == "cosine"``, the ArcFace family). Auxiliary binary targets (``aux=``, e.g.
poisonous) get extra output units trained with :class:`heads.losses.CompositeLoss`.

Training keeps every tensor on the device and slices minibatches out of one permutation (or one
weighted draw) per epoch, so an epoch costs what its matrix products cost.

>>> head = create_head("mlp", hidden=512, epochs=20).fit(X, y, X_val=Xv, y_val=yv)
>>> head.predict_proba(Xv).shape  # (N, len(head.classes_))
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import Tags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from embedstore import resolve_device
from heads._base import EpochBar, HeadMixin, HeadTags, Progress, TrainingRecord
from heads._errors import HeadsError
from heads._metrics import macro_f1
from heads._registry import register_head
from heads.estimators._neural_net import (
    ArrayLike,
    _as_fields,
    _as_matrix,
    _check_choice,
    _HeadNet,
    _lr_factor,
    compute_class_weights,
    prior_sample_weights,
    validation_tensors,
)
from heads.estimators._neural_targets import RowTargets, row_targets, soft_cross_entropy
from heads.estimators._validation import host_array, sklearn_head_tags
from heads.losses import CompositeLoss, create_loss
from heads.settings import BY_NAME, DEFAULTS
from heads.types import ARCHS, CLASS_WEIGHTS, SAMPLERS, Arch, ClassWeights, Sampler

__all__ = [
    "LinearHead",
    "MLPHead",
    "NeuralHead",
    "TransformerHead",
    "compute_class_weights",
    "prior_sample_weights",
    "resolve_device",
]

_EVAL_BATCH = 8192


DEFAULT_LR: dict[str, float] = dict(BY_NAME["lr"].default_by_arch)  # per architecture


# --------------------------------------------------------------------------- the estimator


class NeuralHead(HeadMixin, ClassifierMixin, BaseEstimator):
    """A linear / MLP / transformer classification head trained on the device in seconds.

    Settings (stored as given; checked at ``fit``): ``arch`` (None = the class default),
    ``hidden`` (MLP width; the transformer's feed-forward width), ``dropout``, ``loss`` (a name in
    ``heads.losses``) with ``loss_kwargs``, ``class_weights`` (``"none"``, ``"inverse"``,
    ``"sqrt-inverse"``), ``sampler`` (``"none"``; ``"balanced"``: every class equally likely;
    ``"prior"``: draw training samples so that class frequencies match the validation data,
    needs ``y_val``), ``aux_alpha`` (weight of the auxiliary loss), ``epochs``, ``lr``,
    ``weight_decay`` (AdamW, on weight matrices only), ``batch_size``, ``warmup_epochs``,
    ``patience`` (epochs without a better validation macro-F1 before stopping; None or 0 = never),
    ``seed``, ``device``, ``transformer_dim``, ``transformer_layers``, ``transformer_heads``,
    ``token_dims`` (transformer: the embedding's blocks that become one token each, e.g. the
    widths of several backbones concatenated; None: the whole embedding is one token) and
    ``verbose`` (a progress bar over epochs).

    Learned: ``classes_``, ``n_features_in_``, ``field_dims_``, ``num_aux_``, ``class_counts_``,
    ``model_``, ``loss_``, ``history_`` (one dict per epoch), ``best_epoch_``, ``device_``.
    """

    default_arch: str = "mlp"

    def __init__(
        self,
        *,
        arch: Arch | None = None,
        hidden: int = DEFAULTS["hidden"],
        dropout: float = DEFAULTS["dropout"],
        loss: str = DEFAULTS["loss"],
        loss_kwargs: dict[str, Any] | None = None,
        class_weights: ClassWeights = DEFAULTS["class_weights"],
        sampler: Sampler = DEFAULTS["sampler"],
        aux_alpha: float = DEFAULTS["aux_alpha"],
        epochs: int = DEFAULTS["epochs"],
        lr: float | None = DEFAULTS["lr"],
        weight_decay: float = DEFAULTS["weight_decay"],
        batch_size: int = DEFAULTS["batch_size"],
        warmup_epochs: int = DEFAULTS["warmup_epochs"],
        patience: int | None = DEFAULTS["patience"],
        seed: int = 0,
        device: str = "auto",
        transformer_dim: int = 256,
        transformer_layers: int = 2,
        transformer_heads: int = 4,
        token_dims: Sequence[int] | None = None,
        verbose: bool = False,
    ) -> None:
        self.arch = arch
        self.hidden = hidden
        self.dropout = dropout
        self.loss = loss
        self.loss_kwargs = loss_kwargs
        self.class_weights = class_weights
        self.sampler = sampler
        self.aux_alpha = aux_alpha
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.warmup_epochs = warmup_epochs
        self.patience = patience
        self.seed = seed
        self.device = device
        self.transformer_dim = transformer_dim
        self.transformer_layers = transformer_layers
        self.transformer_heads = transformer_heads
        self.token_dims = token_dims
        self.verbose = verbose

    def __sklearn_tags__(self) -> Tags:
        tags = sklearn_head_tags(super().__sklearn_tags__())
        # LayerNorm over the embedding drops each row's mean and scale: on scikit-learn's
        # 2-feature blobs only the sign of x0 - x1 is left (64% accuracy, whatever the training),
        # short of its 0.83 check. Embeddings have hundreds of features; tests/test_neural.py
        # asserts the accuracy reached on those.
        tags.classifier_tags.poor_score = True
        return tags

    def __head_tags__(self) -> HeadTags:
        arch = self._arch
        return HeadTags(
            arch=arch,
            takes_views=True,
            iterative=True,
            token_fusion=arch == "transformer",
            sample_weight=True,
            soft_targets=True,
        )

    def training_record(self) -> TrainingRecord:
        if not self.__sklearn_is_fitted__():
            return TrainingRecord()
        return TrainingRecord(list(self.history_), int(self.best_epoch_))

    # ------------------------------------------------------------------ building

    @property
    def _arch(self) -> str:
        return self.arch if self.arch is not None else self.default_arch

    def _check_settings(self) -> None:
        _check_choice("arch", self._arch, ARCHS)
        _check_choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        _check_choice("sampler", self.sampler, SAMPLERS)
        for name in ("hidden", "epochs", "batch_size", "transformer_dim", "transformer_layers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self._arch == "transformer" and self.transformer_dim % self.transformer_heads:
            raise ValueError(
                f"transformer_dim ({self.transformer_dim}) must be divisible by "
                f"transformer_heads ({self.transformer_heads})"
            )

    def _build(
        self, input_dim: int, field_dims: list[int], counts: np.ndarray, num_aux: int
    ) -> None:
        """Create ``loss_`` and ``model_`` (fresh weights) on ``device_``."""
        weight = compute_class_weights(counts, self.class_weights)
        self.loss_ = create_loss(
            self.loss,
            num_classes=len(counts),
            class_counts=torch.as_tensor(counts, dtype=torch.float32),
            class_weight=None
            if self.class_weights == "none"
            else torch.as_tensor(weight, dtype=torch.float32),
            **(self.loss_kwargs or {}),
        ).to(self.device_)
        self.model_ = _HeadNet(
            arch=self._arch,
            input_dim=input_dim,
            field_dims=field_dims,
            num_classes=len(counts),
            num_aux=num_aux,
            hidden=self.hidden,
            dropout=self.dropout,
            classifier=getattr(self.loss_, "classifier", "linear"),
            subcenters=int(getattr(self.loss_, "subcenters", 1) or 1),
            transformer_dim=self.transformer_dim,
            transformer_layers=self.transformer_layers,
            transformer_heads=self.transformer_heads,
            token_dims=self.token_dims if self._arch == "transformer" else None,
        ).to(self.device_)
        self.n_features_in_ = input_dim
        self.field_dims_ = list(field_dims)
        self.num_aux_ = num_aux
        self.class_counts_ = np.asarray(counts, dtype=np.int64)

    def _draw(self, n: int, weights: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
        """This epoch's sample order ``(N,)``: a permutation, or a weighted draw with
        replacement."""
        if weights is None:
            return torch.randperm(n, generator=gen, device=self.device_)
        return torch.multinomial(weights, n, replacement=True, generator=gen)

    def _sample_weights(self, y: np.ndarray, y_val: np.ndarray | None) -> torch.Tensor | None:
        c = len(self.classes_)
        if self.sampler == "none":
            return None
        if self.sampler == "balanced":
            w = 1.0 / np.bincount(y, minlength=c)[y]
        else:
            if y_val is None or y_val.size == 0:
                raise ValueError("sampler='prior' needs validation labels: pass y_val= to fit")
            w = prior_sample_weights(y, y_val, c)
            if not (w > 0).any():
                raise ValueError("sampler='prior': no training class occurs in y_val")
        return torch.as_tensor(w, dtype=torch.float32, device=self.device_)

    # ------------------------------------------------------------------ fitting

    def fit(
        self,
        X: ArrayLike,
        y: ArrayLike | Sequence[Any],
        *,
        fields: Sequence[ArrayLike] | None = None,
        aux: ArrayLike | None = None,
        X_val: ArrayLike | None = None,
        y_val: ArrayLike | Sequence[Any] | None = None,
        fields_val: Sequence[ArrayLike] | None = None,
        aux_val: ArrayLike | None = None,
        X_views: ArrayLike | None = None,
        progress: Progress | None = None,
        sample_weight: ArrayLike | None = None,
        soft_targets: ArrayLike | None = None,
        soft_temperature: float = 1.0,
    ) -> NeuralHead:
        """Train on embeddings ``X`` ``(N, D)`` and labels ``y`` ``(N,)``; returns self.

        ``X_views``: ``(N, V, D)`` embeddings of augmented views of the same images (``ingest
        --views``), used as augmentation: each epoch every image is seen once, as one of its
        ``1 + V`` embeddings (the main one or a view) drawn at random. ``progress(done, total,
        info)`` is called after each epoch (``verbose`` without it: a progress bar).

        ``fields``: encoded metadata blocks ``(N, d_i)``; ``aux``: ``(N, A)`` binary targets
        (NaN = missing). With ``X_val``/``y_val`` the best epoch by validation macro-F1 is kept
        and training stops after ``patience`` epochs without improvement; validation samples
        whose label is not among the training classes are left out (with a warning).

        ``sample_weight`` ``(N,)``: each row's loss counts that much (a minibatch's mean is
        divided by its weights' sum). ``soft_targets`` ``(N, C)`` (columns following the sorted
        classes of ``y``): probabilities to match at ``soft_temperature`` instead of the labels
        (distillation; ``y`` still names the classes).
        """
        self._check_settings()
        # scikit-learn's checks (2-D, not empty, not sparse or complex, len(y) == len(X), a
        # class label y); NaN / Inf rows are counted by _as_matrix on the device.
        X, y = validate_data(
            self, host_array(X), host_array(y), dtype=np.float32, ensure_all_finite=False
        )
        check_classification_targets(y)
        self.device_ = resolve_device(self.device)
        dev = self.device_
        if dev.type == "cuda":  # TF32 tensor cores for the fp32 matmuls of training
            torch.backends.cuda.matmul.allow_tf32 = True
        x = _as_matrix(X, "X", dev)  # (N, D)
        n = x.shape[0]
        self.classes_, y_idx = np.unique(y, return_inverse=True)
        y_idx = y_idx.reshape(-1)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y holds a single class ({self.classes_[0].tolist()!r}): one class is not "
                f"enough, a classifier needs at least 2"
            )
        f_train = _as_fields(fields, "fields", dev, n)
        a_train = None if aux is None else _as_matrix(aux, "aux", dev, rows=n, finite=False)
        rt = row_targets(
            np.asarray(X), len(self.classes_), dev, sample_weight, soft_targets, soft_temperature
        )
        xs = x  # (N, D), or with views (1 + V, N, D)
        if X_views is not None:
            v = np.asarray(host_array(X_views), dtype=np.float32)
            if v.ndim != 3 or v.shape[0] != n or v.shape[2] != x.shape[1]:
                raise ValueError(
                    f"X_views must be (N, V, D) = ({n}, V, {x.shape[1]}), not {v.shape}"
                )
            vt = _as_matrix(v.reshape(-1, v.shape[2]), "X_views", dev).reshape(v.shape)
            xs = torch.cat([x[None], vt.transpose(0, 1)])  # (1 + V, N, D)

        val = validation_tensors(self, X_val, y_val, fields_val, aux_val, len(f_train), a_train)
        counts = np.bincount(y_idx, minlength=len(self.classes_))
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(self.seed)
            gen = torch.Generator(device=dev).manual_seed(self.seed)
            self._build(
                x.shape[1],
                [f.shape[1] for f in f_train],
                counts,
                0 if a_train is None else a_train.shape[1],
            )
            weights = self._sample_weights(y_idx, None if val is None else val[1].cpu().numpy())
            bar = EpochBar(f"{self._arch} head") if progress is None and self.verbose else None
            try:
                y_t = torch.as_tensor(y_idx, device=dev)
                self._train(xs, y_t, f_train, a_train, val, weights, gen, progress or bar, rt)
            finally:
                if bar is not None:
                    bar.close()
        return self

    def _criterion(
        self,
        out: torch.Tensor,
        aux_out: torch.Tensor | None,
        y: torch.Tensor,
        aux: Any,
        rt: RowTargets | None = None,
    ) -> torch.Tensor:
        w = None if rt is None else rt.weight
        if rt is not None and rt.soft is not None:  # distillation: the soft targets, not y
            loss = soft_cross_entropy(self.loss_.inference_logits(out), rt)
            if aux_out is None or aux is None:
                return loss
            aux_loss = self._composite.aux_loss(aux_out, aux, batch=out.shape[0])
            return loss + self._composite.alpha * aux_loss
        if aux_out is None or aux is None:
            return self.loss_(out, y, w)
        return self._composite(out, y, aux_logits=aux_out, aux_target=aux, sample_weight=w)

    def _train(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        fields: list[torch.Tensor],
        aux: torch.Tensor | None,
        val: tuple | None,
        weights: torch.Tensor | None,
        gen: torch.Generator,
        progress: Progress | None,
        rt: RowTargets | None = None,
    ) -> None:
        model, n, bs = self.model_, x.shape[-2], int(self.batch_size)  # x: (N, D) or (1 + V, N, D)
        self._composite = CompositeLoss(self.loss_, self.aux_alpha).to(self.device_)
        decay = [p for k, p in model.named_parameters() if p.ndim >= 2 and "token" not in k]
        rest = [p for k, p in model.named_parameters() if not (p.ndim >= 2 and "token" not in k)]
        opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=self.lr if self.lr is not None else DEFAULT_LR[self._arch],
        )
        steps = math.ceil(n / bs)
        warmup, total = int(self.warmup_epochs * steps), int(self.epochs) * steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, warmup, total))

        self.history_: list[dict[str, Any]] = []
        best_f1, best_state, since_best = -1.0, None, 0
        epochs = int(self.epochs)
        for epoch in range(epochs):
            t0 = time.perf_counter()
            model.train()
            order = self._draw(n, weights, gen)  # (N,)
            if x.ndim == 3:  # views: each image as one of its 1 + V embeddings this epoch
                pick = torch.randint(0, x.shape[0], (n,), generator=gen, device=self.device_)
            total_loss = torch.zeros((), device=self.device_)
            for s in range(0, n, bs):
                idx = order[s : s + bs]  # (B,)
                xb = x[idx] if x.ndim == 2 else x[pick[idx], idx]  # (B, D)
                out, aux_out = model(xb, [f[idx] for f in fields])  # (B, C), (B, A)
                aux_b = None if aux is None else aux[idx]
                loss = self._criterion(out, aux_out, y[idx], aux_b, rt and rt.batch(idx))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total_loss += loss.detach() * idx.shape[0]
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": float(total_loss) / n}
            if not math.isfinite(row["train_loss"]):
                raise HeadsError(
                    f"training diverged in epoch {epoch + 1} (loss {row['train_loss']}); "
                    "lower the learning rate (--lr) or check the embeddings for nan/inf"
                )
            row.update(self._evaluate(val))
            row["seconds"] = time.perf_counter() - t0
            self.history_.append(row)
            stop = False
            if val is None:
                pass
            elif row["val_macro_f1"] > best_f1:
                best_f1, since_best, self.best_epoch_ = row["val_macro_f1"], 0, epoch + 1
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
                stop = since_best >= self.patience if self.patience else False
            if progress is not None:  # stopped early: done == total, the run is complete
                shown = {k: row[k] for k in ("train_loss", "val_macro_f1") if row[k] is not None}
                if stop:
                    shown["best_epoch"] = self.best_epoch_
                progress(epoch + 1, epoch + 1 if stop else epochs, shown)
            if stop:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        else:
            self.best_epoch_ = len(self.history_)
        model.eval()

    @torch.no_grad()
    def _evaluate(self, val: tuple | None) -> dict[str, float | None]:
        if val is None:
            return {"val_loss": None, "val_top1": None, "val_macro_f1": None}
        xv, yv, fv, av = val
        out, aux_out = self._outputs(xv, fv)
        loss = self._criterion(out, aux_out, yv, av)
        pred = self.loss_.inference_logits(out).argmax(1)  # (M,)
        return {
            "val_loss": float(loss),
            "val_top1": float((pred == yv).float().mean()),
            "val_macro_f1": macro_f1(yv.cpu().numpy(), pred.cpu().numpy()),
        }

    def _outputs(
        self, x: torch.Tensor, fields: list[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Model outputs over ``x`` in eval mode, batched: ``(N, C)`` and ``(N, A)`` or None."""
        self.model_.eval()
        outs, auxs = [], []
        with torch.no_grad():
            for s in range(0, x.shape[0], _EVAL_BATCH):
                o, a = self.model_(x[s : s + _EVAL_BATCH], [f[s : s + _EVAL_BATCH] for f in fields])
                outs.append(o)
                auxs.append(a)
        aux = torch.cat(auxs) if auxs and auxs[0] is not None else None
        return torch.cat(outs), aux

    # ------------------------------------------------------------------ predicting

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "model_")

    def _inputs(self, X: ArrayLike, fields: Sequence[ArrayLike] | None) -> tuple:
        """Checked ``X`` (as in fit, and ``n_features_in_`` wide) and fields, on the device."""
        check_is_fitted(self)
        X = validate_data(
            self, host_array(X), reset=False, dtype=np.float32, ensure_all_finite=False
        )
        x = _as_matrix(X, "X", self.device_)
        f = _as_fields(fields, "fields", self.device_, x.shape[0])
        dims = [t.shape[1] for t in f]
        if dims != self.field_dims_:
            raise ValueError(
                f"fields have widths {dims}, the head was fitted on {self.field_dims_}"
            )
        return x, f

    def _logits(self, X: ArrayLike, fields: Sequence[ArrayLike] | None) -> torch.Tensor:
        """Inference logits ``(N, C)`` float32 on the device, which every prediction reads."""
        out, _ = self._outputs(*self._inputs(X, fields))
        return self.loss_.inference_logits(out).float()

    def logits(self, X: ArrayLike, fields: Sequence[ArrayLike] | None = None) -> np.ndarray:
        """Logits ``(N, C)`` float32, columns following ``classes_``, two for two classes as well
        (what the unknown detectors and the ensembles read; ``decision_function`` gives
        scikit-learn's ``(N,)`` margin for two classes)."""
        return self._logits(X, fields).cpu().numpy()

    def predict_proba(self, X: ArrayLike, fields: Sequence[ArrayLike] | None = None) -> np.ndarray:
        """Softmax of the logits ``(N, C)``, columns following ``classes_``."""
        return torch.softmax(self._logits(X, fields), dim=1).cpu().numpy()

    def predict(self, X: ArrayLike, fields: Sequence[ArrayLike] | None = None) -> np.ndarray:
        """The most likely class label of each row ``(N,)``."""
        best = self._logits(X, fields).argmax(1).cpu().numpy()  # (N,); checks it is fitted first
        return self.classes_[best]

    def aux_proba(self, X: ArrayLike, fields: Sequence[ArrayLike] | None = None) -> np.ndarray:
        """Sigmoid of the auxiliary outputs ``(N, A)`` (e.g. probability of being poisonous)."""
        x, f = self._inputs(X, fields)
        if not self.num_aux_:
            raise ValueError("the head was fitted without aux targets; pass aux= to fit")
        _, aux = self._outputs(x, f)
        assert aux is not None  # the model has aux outputs when num_aux_ > 0
        return torch.sigmoid(aux.float()).cpu().numpy()

    # ------------------------------------------------------------------ persisting

    def get_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``(config, tensors)``: JSON-able settings and shapes, and the model's state_dict."""
        check_is_fitted(self)
        config = {k: v for k, v in self.get_params().items()}
        config.update(
            arch=self._arch,
            classes=self.classes_.tolist(),
            input_dim=int(self.n_features_in_),
            field_dims=[int(d) for d in self.field_dims_],
            num_aux=int(self.num_aux_),
            class_counts=self.class_counts_.tolist(),
            best_epoch=int(self.best_epoch_),
            history=self.history_,
            fitted=True,
        )
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        return config, tensors

    @classmethod
    def from_state(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> NeuralHead:
        """Rebuild a fitted head from :meth:`get_state`'s output (identical logits)."""
        if not config.get("fitted"):
            raise ValueError("config does not describe a fitted head (fitted is not true)")
        settings = {k: config[k] for k in cls._get_param_names() if k in config}
        if settings.get("arch") == cls.default_arch:
            settings["arch"] = None  # as built by the registered factory
        head = cls(**settings)
        head.device_ = resolve_device(head.device)
        head.classes_ = np.asarray(config["classes"])
        head._build(
            int(config["input_dim"]),
            [int(d) for d in config["field_dims"]],
            np.asarray(config["class_counts"], dtype=np.int64),
            int(config["num_aux"]),
        )
        head.model_.load_state_dict(tensors)
        head.model_.eval()
        head.history_ = list(config.get("history", []))
        head.best_epoch_ = int(config.get("best_epoch", len(head.history_)))
        return head


@register_head("linear")
class LinearHead(NeuralHead):
    """:class:`NeuralHead` with ``arch="linear"``."""

    default_arch = "linear"


@register_head("mlp")
class MLPHead(NeuralHead):
    """:class:`NeuralHead` with ``arch="mlp"``."""

    default_arch = "mlp"


@register_head("transformer")
class TransformerHead(NeuralHead):
    """:class:`NeuralHead` with ``arch="transformer"``: metadata fields as tokens."""

    default_arch = "transformer"
