"""The layer between store and heads: imports one way, one Predictor contract, one registry,
the store owning its queries, typed results, and the defects found while straightening it."""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import embedstore
import heads
from cli import heads_cli
from heads.runs._rundir import read_config, write_config
from tests.conftest import make_synthetic_store, write_class_images

ROOT = Path(__file__).resolve().parents[1]
FAST = {"epochs": 8, "batch_size": 64, "progress": False, "device": "cpu"}
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------- imports


def _imports(path: Path) -> list[tuple[str, bool]]:
    """``(module, inside a function)`` for every import in a file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, in_func: bool) -> None:
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                out.extend((a.name, f) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                out.append((child.module, f))
            visit(child, f)

    visit(tree, False)
    return out


def test_embedstore_never_imports_heads_and_no_package_hides_imports_in_functions():
    for pkg in ("embedstore", "heads"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for mod, in_func in _imports(path):
                top = mod.split(".")[0]
                if pkg == "embedstore":
                    assert top != "heads", (
                        f"{path.name} imports {mod}: embedstore is the lower layer"
                    )
                    assert top != "sklearn", f"{path.name} imports {mod}: the bottom layer is numpy"
                if top in ("embedstore", "heads"):
                    assert not in_func, f"{path.relative_to(ROOT)} imports {mod} inside a function"


def _callers() -> list[Path]:
    return [
        ROOT / "cli.py",
        *sorted((ROOT / "embedstore_cli").rglob("*.py")),
        *sorted((ROOT / "heads").rglob("*.py")),
        *sorted((ROOT / "service").rglob("*.py")),
    ]


def test_callers_use_embedstores_public_names_only():
    """heads, the service and the command line import public packages and names only: no
    ``embedstore._x`` or ``embedstore.store._x`` module, no ``embedstore._x`` attribute."""
    for path in _callers():
        text = path.read_text()
        for mod, _ in _imports(path):
            parts = mod.split(".")
            assert parts[0] != "embedstore" or not any(p.startswith("_") for p in parts), (
                f"{path.relative_to(ROOT)} imports the private module {mod}"
            )
        for node in ast.walk(ast.parse(text)):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] == "embedstore"
            ):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.relative_to(ROOT)} imports {private} from {node.module}"
            if isinstance(node, ast.Attribute) and ast.unparse(node).startswith("embedstore."):
                chain = ast.unparse(node).split(".")
                assert not any(p.startswith("_") for p in chain[1:3]), (
                    f"{path.relative_to(ROOT)} reads {ast.unparse(node)}"
                )


def test_embedstore_modules_stay_small():
    """No module of the bottom layer over 600 lines: a subpackage per concern instead."""
    for path in sorted((ROOT / "embedstore").rglob("*.py")):
        n = len(path.read_text().splitlines())
        assert n <= 600, f"{path.relative_to(ROOT)} has {n} lines"


def test_embedstore_functions_read_like_a_list_of_steps():
    """No function of the bottom layer over ~80 lines (signature and docstring included):
    long orchestration is split into named steps."""
    for path in sorted((ROOT / "embedstore").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                assert n <= 90, f"{path.relative_to(ROOT)}: {node.name} has {n} lines"


def test_no_import_cycle_between_modules():
    graph: dict[str, set[str]] = {}
    for pkg in ("embedstore", "heads"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[name] = {
                m for m, _ in _imports(path) if m.split(".")[0] in ("embedstore", "heads")
            }

    def deps(m: str) -> set[str]:  # a package import runs its __init__
        return {d for d in graph.get(m, ()) if d in graph} - {m}

    state: dict[str, int] = {}

    def walk(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in deps(m):
            if d.split(".")[0] != m.split(".")[0] and d in ("embedstore", "heads"):
                continue  # the other package's public face; checked by the one-way rule
            assert state.get(d) != 1, "import cycle: " + " -> ".join([*trail, m, d])
            if d not in state:
                walk(d, [*trail, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            walk(m, [])


def test_import_embedstore_loads_neither_heads_nor_sklearn():
    code = (
        "import embedstore, sys; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('heads', 'sklearn')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_package_loads_its_names_on_first_use_so_help_is_instant():
    """``import embedstore`` and the command line's module load no heavy library (help and
    option errors answer at once); every public name is still there, from the module that
    defines it."""
    code = (
        "import cli, embedstore, heads, sys; import embedstore.store, embedstore.search, "
        "embedstore.ingestion, embedstore.backbones, embedstore.explore; "
        "heavy = ('torch', 'lance', 'pyarrow', "
        "'transformers', 'sklearn'); print(sorted({m.split('.')[0] for m in sys.modules} & "
        "set(heavy)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # what tools read (the imports under TYPE_CHECKING, and __all__, literal so that linters
    # see them as re-exports) names what is loaded, from the same place: embedstore, each of
    # its public subpackages, and heads
    subpackages = ("store", "backbones", "ingestion", "search", "explore")
    for name in ("embedstore", *(f"embedstore.{s}" for s in subpackages), "heads"):
        _check_lazy_package(importlib.import_module(name))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        embedstore.nope  # noqa: B018
    # a newcomer's surface: at most ~35 names at the top, the rest in subpackages, which are
    # reachable from `import embedstore` alone
    assert len(embedstore.__all__) <= 35
    out = subprocess.run(
        [sys.executable, "-c", "import embedstore; print(embedstore.search.NeighborIndex)"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "NeighborIndex" in out.stdout, out.stderr
    # a name that moved to a subpackage still resolves, with a warning that says where
    with pytest.warns(DeprecationWarning, match="embedstore.search.NeighborIndex"):
        assert embedstore.NeighborIndex is embedstore.search.NeighborIndex  # noqa: B018


def _check_lazy_package(pkg) -> None:
    assert set(pkg.__all__) == set(pkg._EXPORTS), pkg.__name__
    tree = ast.parse(Path(pkg.__file__).read_text())
    block = next(
        n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)
    )
    typed = {a.asname or a.name: (n.module, a.name) for n in block.body for a in n.names}
    assert typed == pkg._EXPORTS, pkg.__name__
    for name, (module, attr) in pkg._EXPORTS.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), attr), name
    if pkg.__name__ == "heads":
        # names whose home is a subpackage still answer as heads.X; each subpackage declares
        # its own
        for name, package in heads._MOVED.items():
            assert name in importlib.import_module(package).__all__, (package, name)
            assert getattr(heads, name) is getattr(importlib.import_module(package), name), name
        assert len(heads.__all__) <= 36 and not set(heads._MOVED) & set(heads._EXPORTS)
        for sub in ("estimators", "runs", "training", "evaluation", "prediction", "losses"):
            package = importlib.import_module(f"heads.{sub}")
            for name in package.__all__:
                assert getattr(package, name) is not None, (sub, name)


# ---------------------------------------------------------------------- registries and options


@pytest.mark.parametrize(
    "registry, family",
    [
        (embedstore.BACKBONES, "backbone"),
        (heads.HEADS, "head"),
        (heads.losses.LOSSES, "loss"),
        (heads.estimators.DETECTORS, "detector"),
        (heads.estimators.ENCODERS, "encoder kind"),
    ],
)
def test_every_plugin_family_is_one_registry_with_the_same_errors(registry, family):
    assert isinstance(registry, embedstore.Registry) and registry.list()
    with pytest.raises(embedstore.RegistryError, match=f"unknown {family} 'nope'; valid .*: "):
        registry.get("nope")


def test_cli_choices_come_from_the_registries_and_device_takes_every_spelling(tmp_path):
    r = CliRunner().invoke(heads_cli, ["train", "--help"])
    assert "[" + "|".join(heads.list_heads()) + "]" in r.output.replace("\n", "").replace(" ", "")
    for bad in ("gpu", "cuda:x", "cpu:0"):
        r = CliRunner().invoke(heads_cli, ["predict", str(tmp_path), "x.jpg", "--device", bad])
        assert r.exit_code == 2 and "invalid device" in r.output
    with pytest.raises(ValueError, match="CUDA is not available|has 0 CUDA"):
        if not embedstore.resolve_device("auto").type == "cuda":
            embedstore.resolve_device("cuda:3")
        else:
            raise ValueError("has 0 CUDA")  # on a GPU machine the spelling alone is checked here
    assert str(embedstore.resolve_device("cpu")) == "cpu"


# ---------------------------------------------------------------------- the store owns its queries


def test_where_is_one_predicate_and_cannot_escape(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=10)
    assert st.count("label = 'species_1'") == 10
    for bad, why in [
        ("label = 'zzz') OR (1=1", "unbalanced parentheses"),
        ("label = 'a'; DROP TABLE images", "';' is not allowed"),
        ("label = 'a", "quote is not closed"),
        ("SELECT * FROM images", "not a statement"),
        ("   ", "it is empty"),
    ]:
        with pytest.raises(embedstore.StoreError, match=why):
            st.read(["id"], where=bad)
    # ids with quotes are escaped by the store, never pasted
    assert st.read(["id"], ids=["x' OR '1'='1"]).num_rows == 0
    assert st.read(["id"], ids=[f"{i:064x}" for i in range(5)]).num_rows == 5


def test_the_store_is_a_few_parts_and_moved_methods_still_answer(tmp_path):
    """``Store`` keeps its rows (at most ~25 methods); the rest lives in its parts, and an old
    spelling still works with a warning that names the new one."""
    st = make_synthetic_store(tmp_path / "s", n_classes=2, per_class=5)
    methods = [
        n for n, v in vars(embedstore.Store).items() if callable(v) or isinstance(v, property)
    ]
    assert len(methods) <= 26, methods  # 24 and __init__, __getattr__
    with pytest.warns(DeprecationWarning, match="Store.records.skipped"):
        assert st.skipped().num_rows == st.records.skipped().num_rows == 0
    with pytest.warns(DeprecationWarning, match="Store.meta.table_metadata"):
        assert st.table_metadata() == st.meta.table_metadata()
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        st.nope  # noqa: B018


def test_the_store_is_a_lancedb_database_with_filtered_vector_search(tmp_path):
    lancedb = pytest.importorskip("lancedb")
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=10)
    X, cols = st.embeddings("synthetic", columns=("id", "label"))
    table = lancedb.connect(str(st.path)).open_table("images")
    hits = (
        table.search(X[0], vector_column_name="emb_synthetic")
        .where("label = 'species_2'", prefilter=True)
        .limit(3)
        .to_list()
    )
    assert len(hits) == 3 and all(h["label"] == "species_2" for h in hits)
    assert table.count_rows() == st.count() == 30


# ---------------------------------------------------------------------- typed results


def test_results_are_dataclasses_whose_dicts_keep_the_json_keys(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    s = embedstore.split(st, folds=2, seed=0)
    assert (
        isinstance(s, embedstore.SplitSummary)
        and s.to_dict()["images_per_fold"] == s.images_per_fold
    )
    info = st.info()
    assert isinstance(info, embedstore.store.StoreInfo) and info.to_dict()["images"] == 60
    res = heads.train(st, fold="all", head="centroid", out=tmp_path / "r", progress=False)
    assert isinstance(res, heads.TrainResult) and isinstance(res.ensemble_metrics, heads.EvalResult)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert set(d) >= {"runs", "ensemble", "metrics"} and "top1" in d["metrics"][0]
    ev = heads.evaluate(res.ensemble, plots=False)
    assert ev.to_dict()["top1"] == ev.metrics["top1"] == res.ensemble_metrics.metrics["top1"]


def test_train_all_folds_evaluates_the_ensemble_once(tmp_path, monkeypatch):
    make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.split(tmp_path / "s", folds=2, seed=0)

    def no_second_evaluation(*a, **kw):
        raise AssertionError("the CLI evaluated the ensemble again")

    monkeypatch.setattr(heads, "evaluate", no_second_evaluation)
    args = [
        "train",
        "--store",
        str(tmp_path / "s"),
        "--fold",
        "all",
        "--head",
        "centroid",
        "--out",
        str(tmp_path / "r"),
        "--quiet",
    ]
    r = CliRunner().invoke(heads_cli, args)
    assert r.exit_code == 0, r.output
    assert "ensemble of 2 folds (out-of-fold): top1" in r.output


# ---------------------------------------------------------------------- Predictor and load


def _metadata_store(path: Path):
    rng = np.random.default_rng(0)
    habitat = [["wood", "meadow", "sand"][i % 3] for i in range(90)]
    return make_synthetic_store(
        path,
        n_classes=3,
        per_class=30,
        sep=1.0,
        extra={"habitat": habitat},
        X=None,
        seed=int(rng.integers(100)),
    )


def test_ensemble_unknown_scores_use_the_metadata_table(tmp_path):
    st = _metadata_store(tmp_path / "s")
    embedstore.split(st, folds=2, seed=0)
    res = heads.train(
        st,
        fold="all",
        head="mlp",
        metadata=["habitat"],
        unknown="energy",
        out=tmp_path / "r",
        **FAST,
    )
    ens = heads.load(res.ensemble)
    assert isinstance(ens, heads.Predictor) and isinstance(ens.members[0], heads.Predictor)
    X, t = st.embeddings("synthetic", columns=("habitat",))
    embs, table = {"emb_synthetic": X}, {"habitat": t["habitat"]}
    got = ens.unknown_scores(embs, ens.logits(embs, table), table)
    want = np.mean(
        [m.unknown_scores(embs, m.logits(embs, table)) - m.threshold for m in ens.members], axis=0
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    blind = np.mean(
        [m.unknown_scores(embs, m.logits(embs)) - m.threshold for m in ens.members], axis=0
    )
    assert not np.allclose(got, blind)  # metadata matters to these members' scores


def test_the_detector_gets_the_training_device_and_decides_from_its_scores(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=2, per_class=30)
    embedstore.split(st, folds=2, seed=0)
    heads.train(
        st,
        fold=0,
        head="centroid",
        unknown="knn",
        unknown_label="not-a-species",
        out=tmp_path / "r",
        progress=False,
        device="cpu",
    )
    cfg = read_config(tmp_path / "r")
    assert cfg["detector"]["config"]["params"]["device"] == "cpu"
    # a detector that rejects everything: the run's unknown label, from the detector's decision
    cfg["detector"]["config"]["threshold"] = 1e9
    write_config(tmp_path / "r", cfg)
    X, _ = st.embeddings("synthetic")
    run = heads.load(tmp_path / "r")
    scores = run.unknown_scores({"emb_synthetic": X[:4]}, run.logits({"emb_synthetic": X[:4]}))
    assert run.is_unknown(scores).all()


def test_predict_labels_unknowns_with_the_runs_unknown_label(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    files = write_class_images(imgs, n_classes=2, per_class=10, size=40)
    embedstore.ingest(imgs, tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False)
    embedstore.split(tmp_path / "s", folds=2, seed=0)
    heads.train(
        tmp_path / "s",
        fold=0,
        head="centroid",
        unknown="msp",
        unknown_label="not-a-species",
        out=tmp_path / "r",
        progress=False,
    )
    cfg = read_config(tmp_path / "r")
    cfg["detector"]["config"]["threshold"] = 2.0  # msp <= 1: every image is rejected
    write_config(tmp_path / "r", cfg)
    res = heads.predict(tmp_path / "r", [str(files[0]), str(files[-1])])
    assert [r.label for r in res] == ["not-a-species"] * 2 and all(r.unknown for r in res)
    assert res[0].to_dict()["label"] == "not-a-species"


def test_a_run_trained_on_cuda_loads_and_predicts_on_cpu(tmp_path):
    st = make_synthetic_store(tmp_path / "s", n_classes=3, per_class=20)
    embedstore.split(st, folds=2, seed=0)
    heads.train(st, fold=0, head="mlp", unknown="knn", out=tmp_path / "r", **FAST)
    X, _ = st.embeddings("synthetic")
    want = heads.load(tmp_path / "r", device="cpu").logits({"emb_synthetic": X})
    cfg = read_config(tmp_path / "r")
    cfg["head_config"]["device"] = "cuda"  # as a run trained on a GPU machine records it
    cfg["detector"]["config"]["params"]["device"] = "cuda"
    write_config(tmp_path / "r", cfg)
    run = heads.load(tmp_path / "r")  # device="auto": this machine's device
    got = run.logits({"emb_synthetic": X})
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert run.unknown_scores({"emb_synthetic": X}, got).shape == (len(X),)
    if embedstore.resolve_device("auto").type == "cuda":  # the reverse, where a GPU exists
        gpu = heads.load(tmp_path / "r", device="cuda").logits({"emb_synthetic": X})
        np.testing.assert_allclose(gpu, want, rtol=1e-3, atol=1e-3)


def test_lookup_and_predict_share_one_files_to_embeddings_path(tmp_path, tiny_dino):
    imgs = tmp_path / "imgs"
    files = write_class_images(imgs, n_classes=2, per_class=6, size=40)
    embedstore.ingest(imgs, tmp_path / "s", backbones=[str(tiny_dino)], workers=0, progress=False)
    st = embedstore.connect(tmp_path / "s")
    info = st.resolve_backbone(None)
    new = tmp_path / "new.png"
    from PIL import Image

    Image.open(files[0]).rotate(90).save(new)
    inputs = embedstore.read_inputs([str(files[0]), str(new), str(tmp_path / "nope.jpg")])
    cache: dict = {}
    batch = embedstore.embed_inputs(
        st, inputs, {info.column: {**info.describe, "dim": info.dim}}, backbones=cache
    )
    assert batch.in_store.tolist() == [True, False, False] and batch.ok.tolist() == [
        True,
        True,
        False,
    ]
    assert "not found" in batch.errors[2] and info.column in cache  # backbone built once, kept
    stored, _ = st.embeddings(None, ids=[inputs[0].id])
    np.testing.assert_array_equal(batch.embeddings[info.column][0], stored[0])


def test_the_wheel_lists_every_package_and_installs_distinctive_names_only():
    """Every folder with an ``__init__.py`` is a package the wheel installs (a subpackage left
    out of pyproject.toml works in a checkout and breaks every real install), under a
    distinctive top-level name: ``service/`` installs as ``embedstore_service``."""
    import tomllib

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = {v: k for k, v in setup.get("package-dir", {}).items()}  # folder -> package name
    found = set()
    for top in ("embedstore", "heads", "embedstore_cli", "service"):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = list(init.parent.relative_to(ROOT).parts)
            parts[0] = mapped.get(parts[0], parts[0])
            found.add(".".join(parts))
    assert found <= set(setup["packages"]), found - set(setup["packages"])
    assert {p.split(".")[0] for p in setup["packages"]} == {
        "embedstore",
        "heads",
        "embedstore_cli",
        "embedstore_service",
    }
    assert "py-modules" not in setup  # cli.py is a shim at the root, not an installed module
