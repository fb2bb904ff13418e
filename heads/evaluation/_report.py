"""One self-contained HTML page about a run: scores, per-class F1, the most-confused classes
with example images, the unknown detector's ROC, suspected label errors and near-duplicates.

Everything is inline (CSS, thumbnails as base64 JPEG, the ROC as a base64 PNG), so the file can
be mailed or attached to an issue and opens anywhere without the store or the run beside it.

>>> heads.report("runs/mlp", out="report.html").path
"""

from __future__ import annotations

import base64
import html
import io
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import embedstore
from embedstore import Result
from embedstore.explore import DUPLICATE_THRESHOLD, load_thumbnail
from heads._metrics import most_confused, openset_scores, per_class_f1
from heads.evaluation._evaluate import class_image_counts, evaluate, holdout_rows, score_rows
from heads.evaluation._issues import IssuesResult, find_issues
from heads.evaluation._plots import plot_roc
from heads.runs._config import EnsembleConfig, RunConfig
from heads.runs._loaded import Ensemble, Predictor, load
from heads.runs._rundir import read_val
from heads.types import METRIC_NAMES

_THUMB_PX = 112
_EXAMPLES_PER_PAIR = 4


@dataclass
class ReportResult(Result):
    """The HTML report written (``path``, ``bytes``) and the sections it holds."""

    run: str
    path: str
    bytes: int
    sections: list[str]
    images_inlined: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # also shown on the page (leaking folds)


class _Thumbs:
    """Inline thumbnails of stored images by id, read once from the store."""

    def __init__(self, st: embedstore.Store | None) -> None:
        self.st, self.count = st, 0
        self.where: dict[str, tuple[Any, Any]] = {}  # id -> (root, path)
        self.cache: dict[tuple[Any, Any, int], str | None] = {}  # (root, path, px) -> base64

    def locate(self, ids: list[str]) -> None:
        need = [i for i in dict.fromkeys(ids) if i not in self.where]
        if self.st is None or not need:
            return
        cols = [c for c in ("id", "path", "root") if self.st.has_column(c)]
        for r in self.st.read(cols, ids=need).to_pylist():
            self.where[r["id"]] = (r.get("root"), r.get("path"))

    def img(self, id_: str, caption: str = "", px: int = _THUMB_PX) -> str:
        self.locate([id_])
        root, path = self.where.get(id_, (None, None))
        key = (root, path, px)
        if key not in self.cache:
            im = load_thumbnail(root, path, px)
            if im is None:
                self.cache[key] = None
            else:
                buf = io.BytesIO()
                im.save(buf, format="JPEG", quality=80)
                self.cache[key] = base64.b64encode(buf.getvalue()).decode()
                self.count += 1
        data = self.cache[key]
        title = html.escape(path or id_)
        pic = (
            f'<img src="data:image/jpeg;base64,{data}" title="{title}" alt="{title}">'
            if data
            else f'<div class="noimg" title="{title}">no image</div>'
        )
        cap = f"<figcaption>{caption}</figcaption>" if caption else ""
        return f"<figure>{pic}{cap}</figure>"


def report(
    run: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    top: int = 12,
    store: str | os.PathLike | None = None,
    duplicates_threshold: float = DUPLICATE_THRESHOLD,
    device: str = "cpu",
) -> ReportResult:
    """Write one self-contained HTML page about a run or ensemble (``out``, default
    ``RUN/report.html``): scores, per-class F1, confusion among the most-confused classes,
    most-confused pairs with thumbnails, the unknown detector's ROC, the ``top`` suspected label
    errors (cleanlab) and the ``top`` near-duplicate groups of the store.

    >>> heads.report("runs/mlp", out="report.html")
    """
    t0 = time.perf_counter()
    path = Path(run)
    model = load(path, device)
    out_path = Path(out) if out is not None else path / "report.html"
    notes: list[str] = []
    try:
        st = embedstore.connect(store or model.store_path, create=False)
    except embedstore.StoreError as e:
        st = None
        notes.append(f"the run's store cannot be opened ({e}); no thumbnails or duplicates")
    thumbs = _Thumbs(st)
    ev = evaluate(path, plots=False, store=store, device=device)
    val = read_val(path)
    scored = score_rows(model, val)
    warnings = [w for w in [fold_leak_warning(ev.metrics, ev.holdout)] if w]
    sections: list[tuple[str, str, str]] = [
        ("scores", "Scores", _scores(ev.metrics, ev.holdout, warnings))
    ]
    sections += _closed_set_sections(model, val, scored, top, thumbs)
    sections.append(("unknown", "Unknown detector", _roc(model, val, store, notes)))
    with tempfile.TemporaryDirectory() as tmp:
        try:
            issues = find_issues(
                path, top=top, out=Path(tmp) / "issues", store=store, plots=False, device=device
            )
            sections.append(("label-errors", "Suspected label errors", _issues(issues, thumbs)))
        except (ValueError, embedstore.StoreError, ImportError) as e:
            notes.append(f"label errors not checked: {e}")
        if st is not None:
            column = next(iter(model.backbone_columns()))
            dups = embedstore.find_duplicates(
                st,
                backbone=column,
                threshold=duplicates_threshold,
                out=Path(tmp) / "dups",
                plots=False,
                device=device,
            )
            sections.append(
                ("duplicates", "Near-duplicates and leakage", _duplicates(dups, thumbs, top))
            )
    page = _page(path, model, ev, sections, notes)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out_path.with_name(out_path.name + ".tmp")
    tmp_out.write_text(page, encoding="utf-8")
    os.replace(tmp_out, out_path)
    return ReportResult(
        str(path),
        str(out_path),
        out_path.stat().st_size,
        [s[0] for s in sections],
        thumbs.count,
        round(time.perf_counter() - t0, 3),
        notes,
        warnings,
    )


def _closed_set_sections(
    model: Predictor, val: dict[str, Any], scored: dict[str, Any], top: int, thumbs: _Thumbs
) -> list[tuple[str, str, str]]:
    """Per-class F1, the confusion among the most-confused classes and their pairs (none
    without validation images of a known class)."""
    known = scored["_true"] >= 0
    if not known.any():
        return []
    y, p = scored["_true"][known], scored["_pred_closed"][known]
    f1 = per_class_f1(y, p, len(model.classes))
    pairs = most_confused(y, p, model.classes, top=top)
    ids = np.asarray(val["id"], dtype=object)[known]
    probs = np.asarray(val["logits"], np.float64)[known]
    confusion = _confusion(y, p, model.classes, pairs)
    return [
        ("per-class", "Per-class F1", _per_class(f1, model)),
        ("confusion", "Confusion among the most-confused classes", confusion),
        (
            "pairs",
            "Most-confused pairs",
            _pairs(pairs[:6], ids, y, p, probs, model.classes, thumbs),
        ),
    ]


# ---------------------------------------------------------------------------- sections

_CSS = (
    "\n"
    'body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;'
    "color:#222;background:#fafafa}\n"
    "main{max-width:1180px;margin:0 auto;padding:20px 28px 60px}\n"
    "h1{font-size:22px;margin:8px 0 4px} h2{font-size:18px;margin:34px 0 10px;"
    "border-bottom:1px solid #ddd;padding-bottom:4px}\n"
    "nav a{margin-right:14px;color:#2060a0;text-decoration:none} .meta{color:#666;"
    "font-size:13px}\n"
    "table{border-collapse:collapse;margin:6px 0;background:#fff} td,th{padding:4px 9px;"
    "border:1px solid #e2e2e2;text-align:left}\n"
    "th{background:#f0f0f0;font-weight:600} td.num{text-align:right;"
    "font-variant-numeric:tabular-nums}\n"
    ".bar{display:inline-block;height:10px;background:#4c78a8;vertical-align:middle;"
    "margin-right:6px}\n"
    ".cm td{width:34px;text-align:center;font-variant-numeric:tabular-nums} .cm "
    "th.r{white-space:nowrap}\n"
    ".cm th.c{vertical-align:bottom;padding:6px 4px} .cm th.c span{writing-mode:vertical-rl;"
    "transform:rotate(180deg);white-space:nowrap}\n"
    "figure{display:inline-block;margin:3px 5px 6px 0;vertical-align:top;width:112px}\n"
    "figure img,.noimg{width:112px;height:112px;object-fit:cover;border-radius:3px;"
    "display:block;background:#e5e5e5}\n"
    ".noimg{line-height:112px;text-align:center;color:#888;font-size:12px}\n"
    "figcaption{font-size:11px;line-height:1.25;color:#444;overflow-wrap:anywhere}\n"
    ".row{background:#fff;border:1px solid #e2e2e2;border-radius:4px;padding:8px 10px;"
    "margin:8px 0}\n"
    ".more{color:#666;font-size:12px}\n"
    ".row h3{font-size:14px;margin:0 0 6px;font-weight:600} .leak{color:#b02020;"
    "font-weight:600}\n"
    ".suspect img{outline:3px solid #d62728;outline-offset:-3px} .note{color:#666;"
    "font-style:italic}\n"
)


def _head_name(cfg: RunConfig | EnsembleConfig) -> str | None:
    return cfg.head if isinstance(cfg, RunConfig) else None


def _page(
    path: Path, model: Predictor, ev: Any, sections: list[tuple[str, str, str]], notes: list[str]
) -> str:
    cfg = model.config
    backbone = ", ".join(b.get("name", c) for c, b in model.backbone_columns().items())
    members = model.members if isinstance(model, Ensemble) else []
    kind_heads = sorted({str(_head_name(m.config)) for m in members}) or [str(_head_name(cfg))]
    what = f"ensemble of {len(members)} members" if members else "run"
    meta = (
        f"{what}, head {html.escape(', '.join(kind_heads))}, on "
        f"{html.escape(backbone)}; {len(model.classes)} classes; store "
        f"{html.escape(model.store_path)}; {ev.metrics.get('n', 0)} validation images"
    )
    nav = " ".join(f'<a href="#{k}">{html.escape(t)}</a>' for k, t, _ in sections)
    body = "".join(
        f'<section id="{k}"><h2>{html.escape(t)}</h2>{h}</section>' for k, t, h in sections
    )
    extra = "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{_CSP_META}<title>Report: '
        f"{html.escape(str(path))}</title><style>{_CSS}</style></head><body><main>"
        f"<h1>{html.escape(str(path))}</h1><p class='meta'>{meta}</p><nav>{nav}</nav>{extra}"
        f"{body}<p class='meta'>written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        "</p></main></body></html>"
    )


# The page runs no script and loads nothing: whatever a label holds stays text.
_CSP_META = (
    '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
    "script-src 'none'; style-src 'unsafe-inline'; img-src data:\">"
)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


LEAK_GAP = 0.1  # out-of-fold top-1 above held-out top-1 by more than this: folds likely leak


def fold_leak_warning(metrics: dict[str, Any], holdout: dict[str, Any] | None) -> str | None:
    """A warning when the out-of-fold top-1 exceeds the held-out part's by more than
    ``LEAK_GAP``: the folds likely leak (near-duplicates on both sides of a fold)."""
    oof, held = metrics.get("top1"), (holdout or {}).get("top1")
    if not isinstance(oof, float) or not isinstance(held, float) or oof - held <= LEAK_GAP:
        return None
    return (
        f"out-of-fold top-1 {oof:.3f} is {oof - held:.3f} above the held-out part's {held:.3f}: "
        "a gap this large usually means the folds leak (near-duplicate photos, e.g. one series "
        "of shots, on both sides of a fold), so the out-of-fold scores are optimistic. "
        "Find them with `embedstore duplicates`; keep each series in one fold with "
        "`embedstore split --group-by <column>` (a column naming the series), then retrain"
    )


def _scores(
    metrics: dict[str, Any], holdout: dict[str, Any] | None, warnings: list[str] | None = None
) -> str:
    keys = [
        k
        for k in METRIC_NAMES
        if isinstance(metrics.get(k), float) or (holdout and isinstance(holdout.get(k), float))
    ]
    head = "<tr><th>metric</th><th>validation (out-of-fold)</th>" + (
        "<th>held-out part</th></tr>" if holdout else "</tr>"
    )
    rows = "".join(
        f"<tr><td>{k}</td><td class='num'>{_fmt(metrics.get(k, '-'))}</td>"
        + (f"<td class='num'>{_fmt(holdout.get(k, '-'))}</td>" if holdout else "")
        + "</tr>"
        for k in keys
    )
    n = (
        f"<tr><td>images</td><td class='num'>{metrics.get('n')}</td>"
        + (f"<td class='num'>{holdout.get('n')}</td>" if holdout else "")
        + "</tr>"
    )
    notes = "".join(f'<p class="leak">{html.escape(w)}</p>' for w in warnings or [])
    return f"<table>{head}{rows}{n}</table>{notes}"


def _per_class(f1: np.ndarray, model: Predictor) -> str:
    counts, counted = class_image_counts(model.path, model)
    rows = []
    for i in np.argsort(f1, kind="stable"):
        w = int(round(160 * float(f1[i])))
        rows.append(
            f"<tr><td>{html.escape(model.classes[i])}</td><td class='num'>{int(counts[i])}</td>"
            f"<td><span class='bar' style='width:{w}px'></span>{f1[i]:.3f}</td></tr>"
        )
    return (
        f"<p class='meta'>Worst first; {counted} per class beside each. Macro-F1 "
        f"{float(np.mean(f1)):.4f}.</p><table><tr><th>class</th><th>{counted}</th>"
        f"<th>F1</th></tr>{''.join(rows)}</table>"
    )


def _confusion(
    y: np.ndarray, p: np.ndarray, classes: list[str], pairs: list[dict[str, Any]]
) -> str:
    if not pairs:
        return "<p>No validation image is misclassified.</p>"
    idx = {c: i for i, c in enumerate(classes)}
    chosen: list[int] = []
    for pr in pairs:
        for name in (pr["true"], pr["predicted"]):
            if name in idx and idx[name] not in chosen and len(chosen) < 10:
                chosen.append(idx[name])
    cm = np.zeros((len(chosen), len(chosen)), np.int64)
    pos = {c: j for j, c in enumerate(chosen)}
    for t_, p_ in zip(y.tolist(), p.tolist(), strict=True):
        if t_ in pos and p_ in pos:
            cm[pos[t_], pos[p_]] += 1
    totals = np.bincount(y, minlength=len(classes))[chosen]
    head = "".join(f"<th class='c'><span>{html.escape(classes[c])}</span></th>" for c in chosen)
    rows = []
    for a, ca in enumerate(chosen):
        cells = []
        for b in range(len(chosen)):
            rate = cm[a, b] / max(totals[a], 1)
            if a == b:
                color = f"rgba(44,160,44,{0.15 + 0.6 * rate:.2f})"
            else:
                color = f"rgba(214,39,40,{min(1.0, 4 * rate):.2f})" if cm[a, b] else "#fff"
            cells.append(f"<td style='background:{color}'>{cm[a, b] or ''}</td>")
        rows.append(
            f"<tr><th class='r'>{html.escape(classes[ca])} ({totals[a]})</th>{''.join(cells)}</tr>"
        )
    return (
        "<p class='meta'>Rows: true class (validation images); columns: predicted class. Only the "
        "classes of the most frequent mistakes are shown.</p>"
        f"<table class='cm'><tr><th>true \\ predicted</th>{head}</tr>{''.join(rows)}</table>"
    )


def _pairs(
    pairs: list[dict[str, Any]],
    ids: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    logits: np.ndarray,
    classes: list[str],
    thumbs: _Thumbs,
) -> str:
    if not pairs:
        return "<p>No mistakes to show.</p>"
    idx = {c: i for i, c in enumerate(classes)}
    out = []
    thumbs.locate([str(i) for i in ids])
    for pr in pairs:
        a, b = idx[pr["true"]], idx[pr["predicted"]]
        wrong = np.flatnonzero((y == a) & (p == b))
        wrong = wrong[np.argsort(-(logits[wrong, b] - logits[wrong, a]))][:_EXAMPLES_PER_PAIR]
        typical = np.flatnonzero((y == b) & (p == b))
        typical = typical[np.argsort(-logits[typical, b])][:2]
        figs = "".join(thumbs.img(str(ids[i]), f"true {html.escape(pr['true'])}") for i in wrong)
        figs += "".join(
            thumbs.img(str(ids[i]), f"a real {html.escape(pr['predicted'])}") for i in typical
        )
        out.append(
            f"<div class='row'><h3>{html.escape(pr['true'])} taken for "
            f"{html.escape(pr['predicted'])}: {pr['count']} image(s)</h3>{figs}</div>"
        )
    return (
        "<p class='meta'>Examples of each mistake (most confident first), then typical images "
        f"of the class they were taken for.</p>{''.join(out)}"
    )


def _roc(model: Predictor, val: dict[str, Any], store: Any, notes: list[str]) -> str:
    if model.threshold is None:
        return "<p>The run has no unknown-class detector (train with <code>--unknown</code>).</p>"
    classes = set(model.classes)
    parts = [val]
    try:
        held = holdout_rows(model, store)
    except (ValueError, OSError) as e:
        held = None
        notes.append(f"held-out part not scored for the ROC: {e}")
    if held is not None:
        parts.append(held)
    labels = np.concatenate(
        [np.asarray(v["label"], dtype=object) for v in parts if v.get("unknown_score") is not None]
    )
    scores = [
        np.asarray(v["unknown_score"], np.float64)
        for v in parts
        if v.get("unknown_score") is not None
    ]
    if not scores:
        return "<p>No unknown scores were saved with the validation predictions.</p>"
    s = np.concatenate(scores)
    keep = np.isfinite(s) & np.array([v is not None for v in labels])
    known = np.array([v in classes for v in labels])[keep]
    s = s[keep]
    if known.all() or not known.any():
        return (
            f"<p>No validation or held-out image is labelled '{html.escape(model.unknown_label)}' "
            "(or every one is), so there is no ROC here; <code>heads openset --store S "
            "--roc-png roc.png</code> measures the detectors by holding classes out.</p>"
        )
    summary = openset_scores(known, s)
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_roc({"detector": (known, s)}, Path(tmp) / "roc.png").read_bytes()
    data = base64.b64encode(png).decode()
    return (
        f"<p>{int(known.sum())} known and {int((~known).sum())} unknown images: AUROC "
        f"{summary['auroc']:.4f}, unknowns accepted at 95% of knowns kept (FPR95) "
        f"{summary['fpr95']:.4f}; threshold {model.threshold:.4g}.</p>"
        f'<img src="data:image/png;base64,{data}" alt="ROC" style="max-width:520px">'
    )


def _issues(res: IssuesResult, thumbs: _Thumbs) -> str:
    thumbs.locate(
        [s.id for s in res.label_issues] + [n["id"] for s in res.label_issues for n in s.neighbors]
    )
    out = [
        f"<p class='meta'>cleanlab (confident learning on the out-of-fold probabilities) flags "
        f"{res.flagged} of {res.images} validation images; the {len(res.label_issues)} most "
        "suspect, each beside its nearest stored neighbours.</p>"
    ]
    for s in res.label_issues:
        figs = f"<span class='suspect'>{thumbs.img(s.id, 'given ' + html.escape(s.given))}</span>"
        figs += "".join(
            thumbs.img(n["id"], f"{html.escape(str(n['label']))} {n['similarity']:.2f}")
            for n in s.neighbors
        )
        flag = " (flagged)" if s.flagged else ""
        says = (
            f"model agrees but is unsure (p = {s.given_probability:.2f}, next "
            f"<b>{html.escape(s.runner_up)}</b> {s.runner_up_probability:.2f}: near the "
            "decision boundary"
            if s.agrees
            else f"model says <b>{html.escape(s.suggested)}</b> (p = {s.suggested_probability:.2f}"
        )
        out.append(
            f"<div class='row'><h3>#{s.rank} {html.escape(Path(s.path or s.id).name)}: given "
            f"<b>{html.escape(s.given)}</b>, {says}; label quality {s.label_quality:.3f}{flag})"
            f"</h3>{figs}</div>"
        )
    return "".join(out)


def _duplicates(res: embedstore.DuplicatesResult, thumbs: _Thumbs, top: int) -> str:
    leak = ", ".join(f"{k}: {v}" for k, v in res.leakage.items() if v) or "none"
    out = [
        f"<p>{res.groups_found} groups of near-duplicates ({res.pairs_found} pairs with cosine "
        f"similarity &ge; {res.threshold}) among {res.images} images. Leaking pairs: "
        f"<span class='{'leak' if res.leaking_pairs else ''}'>{leak}</span>; "
        f"{res.holdout_images} held-out image(s) have a near-duplicate in a training fold.</p>"
    ]
    thumbs.locate([i for g in res.groups[:top] for i in g.ids[:6]])
    for g in res.groups[:top]:
        figs = "".join(
            thumbs.img(
                g.ids[i],
                "<br>".join(
                    html.escape(t)
                    for t in (str(g.labels[i]), g.splits[i] or "-", g.link_caption(i))
                ),
            )
            for i in range(min(g.size, 6))
        )
        if g.size > 6:
            figs += f"<span class='more'>+{g.size - 6} more</span>"
        leaks = f" <span class='leak'>leak: {', '.join(g.leaks)}</span>" if g.leaks else ""
        out.append(
            f"<div class='row'><h3>group {g.group}: {g.size} images, best similarity "
            f"{g.similarity:.3f}{leaks}</h3>{figs}</div>"
        )
    return "".join(out)
