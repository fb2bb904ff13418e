"""heads.tune: Optuna over a head's settings on the out-of-fold macro-F1, the best retrained as a
normal run, the trials written beside it."""

from __future__ import annotations

import csv
import functools
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import heads_cli
from tests.conftest import make_synthetic_store, write_class_images

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = {"epochs": 8, "batch_size": 64, "device": "cpu", "progress": False}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # close clusters: the default recipe is not already perfect, so settings matter
    path = tmp_path_factory.mktemp("tune") / "s"
    st = make_synthetic_store(path, n_classes=6, per_class=30, dim=16, sep=1.0)
    embedstore.split(st, folds=3, seed=0)
    return path


@pytest.fixture(scope="module")
def tuned(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("tuned") / "run"
    return heads.tune(store, head="mlp", trials=6, out=out, seed=0, **FAST)


def test_tune_tries_the_default_first_keeps_the_best_and_retrains_it_as_a_normal_run(tuned):
    res, run = tuned, tuned.run
    rows = list(csv.DictReader(open(res.trials_csv)))
    assert len(rows) == res.n_trials == 6 and res.n_complete + res.n_pruned + res.n_failed == 6
    assert res.n_failed == 0 and res.n_complete >= 3
    # trial 0 is the head's own recipe, so tuning can never end below it out-of-fold
    first = rows[0]
    assert (
        first["lr"],
        first["weight_decay"],
        first["dropout"],
        first["hidden"],
        first["loss"],
    ) == ("0.001", "0.0001", "0.1", "1024", "ce")
    assert res.default_macro_f1 == pytest.approx(float(first["macro_f1"]))
    assert res.best_macro_f1 >= res.default_macro_f1
    assert res.best_macro_f1 == max(float(r["macro_f1"]) for r in rows if r["macro_f1"])
    assert float(rows[-1]["best_so_far"]) == pytest.approx(res.best_macro_f1)
    # the best settings retrained through heads.train: a fold ensemble that scores exactly what
    # the trial scored out-of-fold (same seed, same folds), and loads like any run
    ev = heads.evaluate(res.run)
    assert ev.metrics["macro_f1"] == pytest.approx(res.best_macro_f1, abs=1e-9)
    assert ev.metrics["top1"] == pytest.approx(res.best_top1, abs=1e-9)
    assert ev.metrics["macro_f1"] > 0.8
    cfg = json.loads((Path(run) / "fold0" / "config.json").read_text())["head_config"]
    for k, v in res.best_params.items():
        if k == "label_smoothing":
            assert cfg["loss_kwargs"] == {"label_smoothing": pytest.approx(v)}
        else:
            assert cfg[k] == pytest.approx(v) if isinstance(v, float) else cfg[k] == v
    summary = json.loads(open(res.trials_json).read())
    assert summary["best"]["trial"] == res.best_trial and len(summary["trials"]) == 6
    assert open(res.trials_png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert len(heads.load(res.run).classes) == 6


@pytest.mark.slow
def test_tune_is_reproducible_with_a_seed(store, tuned, tmp_path):
    again = heads.tune(store, head="mlp", trials=3, out=tmp_path / "a", seed=0, **FAST)
    ra = [(r["state"], r["macro_f1"], r["lr"]) for r in csv.DictReader(open(again.trials_csv))]
    rb = [(r["state"], r["macro_f1"], r["lr"]) for r in csv.DictReader(open(tuned.trials_csv))]
    assert ra == rb[:3]  # the first trials are never pruned: the same draws, the same scores


def test_the_linear_head_has_no_hidden_width_to_search():
    assert heads.training.search_space("linear") == {
        "lr": (1e-3, 1e-1, "log"),
        "weight_decay": (1e-6, 1.0, "log"),
        "dropout": (0.0, 0.7, "linear"),
        "loss": heads.list_losses(),
        "label_smoothing": (0.0, 0.3, "linear"),
    }
    assert "hidden" in heads.training.search_space("mlp")
    assert set(heads.training.search_space("mlp", {"loss": "focal", "dropout": 0.2})) == {
        "lr",
        "weight_decay",
        "hidden",
    }


@pytest.mark.slow
def test_tune_stops_at_the_time_limit_with_the_trials_it_finished(store, tmp_path):
    res = heads.tune(store, head="mlp", trials=200, timeout_s=1.0, out=tmp_path / "r", **FAST)
    assert 1 <= res.n_complete and res.n_trials < 200
    assert (tmp_path / "r" / "config.json").is_file()
    # the limit bounds the search; the retrain after it is timed apart
    assert res.timeout_s == 1.0 and res.seconds >= 1.0 and res.retrain_seconds > 0


def test_tune_cli_says_what_the_time_limit_bounds(store, tmp_path):
    r = CliRunner().invoke(heads_cli, ["tune", "--help"])
    assert "the best is then retrained" in " ".join(r.output.split())
    args = ["tune", "--store", str(store), "--head", "mlp", "--trials", "50"]
    args += ["--timeout-s", "0.5", "--epochs", "4", "--device", "cpu", "--quiet"]
    r = CliRunner().invoke(heads_cli, [*args, "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("search "))
    assert re.match(
        r"search stopped after \d+ s \(--timeout-s 0\.5 bounds the search\); "
        r"retraining the best took \d+ s more \(\d+ s in all\)$",
        line,
    ), line


def test_tune_bad_input_says_what_to_do(store, tuned, tmp_path):
    with pytest.raises(heads.HeadsError, match="--head knn: nothing to search"):
        heads.tune(store, head="knn", trials=2, out=tmp_path / "k")
    with pytest.raises(heads.HeadsError, match="--losses nope: valid losses: arcface, ce"):
        heads.tune(store, head="mlp", losses=["nope"], out=tmp_path / "k")
    with pytest.raises(heads.HeadsError, match="a run is there already; give --overwrite"):
        heads.tune(store, head="mlp", trials=1, out=tuned.run, **FAST)
    with pytest.raises(heads.HeadsError, match="--trials must be >= 1"):
        heads.tune(store, head="mlp", trials=0)


def test_heads_tune_cli(store, tmp_path):
    r = CliRunner().invoke(heads_cli, ["tune", "--help"])
    assert r.exit_code == 0 and "heads tune --store grocery --head mlp --trials 50" in r.output
    out = tmp_path / "cli"
    args = [
        "tune",
        "--store",
        str(store),
        "--head",
        "mlp",
        "--trials",
        "2",
        "--epochs",
        "8",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--losses",
        "ce,focal",
        "--out",
        str(out),
        "--quiet",
    ]
    r = CliRunner().invoke(heads_cli, args)
    assert r.exit_code == 0, r.output
    assert "default recipe (trial 0): macro-F1" in r.output and "best (trial" in r.output
    assert "search took" not in r.output  # no --timeout-s: nothing to say about it
    assert (out / "trials.csv").is_file() and (out / "trials.png").is_file()
    r = CliRunner().invoke(
        heads_cli, ["tune", "--store", str(store), "--head", "knn", "--out", str(tmp_path / "x")]
    )
    assert r.exit_code == 2 and "nothing to search" in r.output


@pytest.mark.slow
def test_tune_on_real_photos_beats_or_matches_the_default_recipe(flowers_store, tmp_path):
    embedstore.split(flowers_store, folds=3, seed=0) if not embedstore.connect(
        flowers_store, create=False
    ).info().folds else None
    res = heads.tune(
        flowers_store,
        head="mlp",
        trials=4,
        out=tmp_path / "run",
        epochs=15,
        device="cpu",
        progress=False,
    )
    assert res.best_macro_f1 >= res.default_macro_f1 >= 0.85
    ev = heads.evaluate(res.run)
    assert ev.metrics["macro_f1"] == pytest.approx(res.best_macro_f1, abs=1e-9)


@pytest.fixture(scope="module")
def views_store(tiny_dino, tmp_path_factory):
    """Written images embedded by a tiny DINOv2 with a flip view beside each (ingest --views)."""
    root = tmp_path_factory.mktemp("views-imgs")
    write_class_images(root, n_classes=3, per_class=6)
    path = tmp_path_factory.mktemp("views") / "s"
    embedstore.ingest(
        root, path, backbones=[str(tiny_dino)], workers=1, progress=False, views="flip"
    )
    embedstore.split(path, folds=2, seed=0)
    return path


def test_tune_uses_the_stored_views_as_train_does_and_no_views_turns_them_off(
    views_store, tmp_path, monkeypatch
):
    calls = []  # what every fit and prediction of the head saw, trials and retrained run alike
    fit, logits = heads.estimators.NeuralHead.fit, heads.estimators.NeuralHead.logits

    @functools.wraps(fit)
    def spy_fit(self, X, y, **kw):
        calls.append(("fit", "X_views" in kw))
        return fit(self, X, y, **kw)

    @functools.wraps(logits)
    def spy_logits(self, X, *a, **kw):
        calls.append(("logits", len(X)))
        return logits(self, X, *a, **kw)

    monkeypatch.setattr(heads.estimators.NeuralHead, "fit", spy_fit)
    monkeypatch.setattr(heads.estimators.NeuralHead, "logits", spy_logits)
    fast = {"epochs": 3, "batch_size": 16, "device": "cpu", "progress": False}
    res = heads.tune(views_store, head="linear", trials=2, out=tmp_path / "v", **fast)
    assert res.views == {"train": ["flip"], "tta": ["flip"]}
    # 2 trials x 2 folds, then the 2 retrained folds: every fit trains on the views, and each
    # trial scores its fold with TTA (the logits of the main embeddings, then of the flips)
    assert [c for c in calls if c[0] == "fit"] == [("fit", True)] * 6
    first = calls.index(("fit", True))
    assert [c[0] for c in calls[first + 1 : first + 3]] == ["logits", "logits"]
    assert calls[first + 1][1] == calls[first + 2][1] > 0
    assert calls[first + 3][0] == "fit"
    rows = list(csv.DictReader(open(res.trials_csv)))
    assert len(rows) == 2 and {(r["views"], r["tta"]) for r in rows} == {("True", "True")}
    assert json.loads(open(res.trials_json).read())["views"] == res.views
    for k in (0, 1):  # the best retrained as heads.train does by default: views + TTA
        cfg = json.loads((tmp_path / "v" / f"fold{k}" / "config.json").read_text())
        assert cfg["views"] == {"train": ["flip"], "tta": ["flip"]}
    # the trials were scored with TTA, as the retrained run predicts: the same out-of-fold score
    ev = heads.evaluate(res.run)
    assert ev.metrics["macro_f1"] == pytest.approx(res.best_macro_f1, abs=1e-9)
    assert ev.metrics["top1"] == pytest.approx(res.best_top1, abs=1e-9)

    out = tmp_path / "plain"
    args = [
        "tune",
        "--store",
        str(views_store),
        "--head",
        "linear",
        "--trials",
        "1",
        "--epochs",
        "3",
        "--device",
        "cpu",
        "--no-views",
        "--no-tta",
        "--out",
        str(out),
        "--quiet",
    ]
    r = CliRunner().invoke(heads_cli, args)
    assert r.exit_code == 0, r.output
    assert "views:" not in r.output
    assert json.loads((out / "trials.json").read_text())["views"] == {"train": [], "tta": []}
    assert list(csv.DictReader(open(out / "trials.csv")))[0]["views"] == "False"
    assert json.loads((out / "fold0" / "config.json").read_text())["views"] == {
        "train": [],
        "tta": [],
    }
    # views only for training, no TTA: the library switches are heads.train's
    res = heads.tune(views_store, head="linear", trials=1, out=tmp_path / "t", tta=False, **fast)
    assert res.views == {"train": ["flip"], "tta": []}


def test_tune_with_views_on_a_store_without_them_says_how_to_add_them(store, tmp_path):
    with pytest.raises(heads.HeadsError, match="no views of synthetic are stored"):
        heads.tune(store, head="mlp", trials=1, views=True, out=tmp_path / "r", **FAST)


def _trials_figure(tmp_path, monkeypatch, **kw):
    import heads.evaluation._plots as plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), save(fig, path))[1])
    plots.plot_trials(path=tmp_path / "trials.png", **kw)
    ax = figs[0].axes[0]
    lines = {ln.get_label().split(" (")[0]: ln for ln in ax.get_lines()}
    dots = {c.get_label().split(" (")[0]: c for c in ax.collections}
    return ax, lines, dots


def test_trials_plot_one_trial_shows_the_best_line_over_the_default(tmp_path, monkeypatch):
    _, lines, _ = _trials_figure(
        tmp_path, monkeypatch, numbers=[0], values=[0.9], pruned=[None], default=0.9
    )
    best, default = lines["best so far"], lines["default recipe"]
    assert len(set(best.get_xdata())) >= 2  # a segment, not a single invisible point
    assert best.get_zorder() > default.get_zorder()


def test_trials_plot_pruned_trials_are_not_drawn_as_scores(tmp_path, monkeypatch):
    ax, lines, dots = _trials_figure(
        tmp_path,
        monkeypatch,
        numbers=[0, 1, 2],
        values=[0.9615, None, 0.9],
        pruned=[None, 0.98, None],
        default=0.9615,
    )
    assert max(lines["best so far"].get_ydata()) == pytest.approx(0.9615)
    assert max(dots["trial"].get_offsets()[:, 1]) == pytest.approx(0.9615)
    cut = dots["pruned"]
    assert list(cut.get_offsets()[:, 0]) == [1]
    assert cut.get_offset_transform() != ax.transData  # a strip at the bottom, in axes units
    assert all(y < 0.1 for y in cut.get_offsets()[:, 1])  # not at its partial 0.98
