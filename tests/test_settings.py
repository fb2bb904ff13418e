"""The heads' settings declared once (``heads/settings.py``): the heads' defaults, tune's search
space and the command line's ``heads train`` options agree with the declaration."""

from __future__ import annotations

import subprocess
import sys

import pytest

import heads
from heads.settings import BY_NAME, PSEUDO_BY_NAME, SETTINGS, TuneRange, head_options
from heads.training._tune import TUNED_PARAMS


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: s.name)
def test_each_head_taking_a_setting_defaults_to_the_declared_value(setting):
    for name in setting.heads:
        params = heads.create_head(name).get_params()
        if setting.name == "label_smoothing":  # through loss_kwargs
            assert params["loss_kwargs"] is None and setting.default == 0.0
        else:
            assert params[setting.name] == setting.default, (name, setting.name)


def test_the_search_space_comes_from_the_declaration():
    lr = BY_NAME["lr"]
    for head in ("linear", "mlp", "transformer"):
        space = heads.training.search_space(head)
        assert space["lr"] == lr.tune[head].as_space()
        assert space["dropout"] == BY_NAME["dropout"].tune.as_space() == (0.0, 0.7, "linear")
        assert list(space) == [n for n in TUNED_PARAMS if n in space]  # declared order
    assert (
        heads.training.search_space("knn") == {} and heads.training.search_space("centroid") == {}
    )


def test_label_smoothing_becomes_loss_kwargs():
    assert head_options({"label_smoothing": 0.1, "lr": None, "hidden": 8}) == {
        "hidden": 8,
        "loss_kwargs": {"label_smoothing": 0.1},
    }


def test_bounds_as_pydantic_keywords():
    assert BY_NAME["lr"].bounds() == {"gt": 0, "le": 100}
    assert BY_NAME["dropout"].bounds() == {"ge": 0, "le": 1}
    assert BY_NAME["epochs"].bounds() == {"ge": 1, "le": 10_000}
    assert TuneRange(choices=(1, 2)).as_space() == [1, 2]


def test_every_head_option_of_the_command_line_is_declared():
    from embedstore_cli.train import train_cmd, tune_cmd

    run_level = {"store", "fold", "backbone", "head", "metadata", "aux_targets", "unknown"}
    run_level |= {"unknown_label", "where", "refit", "ensemble", "views", "tta", "seed"}
    run_level |= {"class_thresholds"}
    run_level |= {"device", "out", "overwrite", "as_json", "quiet", "backbones", "rank"}
    names = {p.name for p in train_cmd.params}
    head_level = names - run_level - set(PSEUDO_BY_NAME)
    assert head_level <= set(BY_NAME), head_level - set(BY_NAME)
    # and every declared setting is an option of `heads train` (derived, not restated)
    assert set(BY_NAME) | set(PSEUDO_BY_NAME) <= names, set(BY_NAME) - names
    assert {"epochs", "batch_size", "patience"} <= {p.name for p in tune_cmd.params}


def test_reading_the_settings_loads_no_torch():
    code = "import sys, heads.settings; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_pseudo_label_and_distill_options_are_declared_once():
    """`heads train`, `heads distill` and the service's train body take them from the
    declaration; no head takes them."""
    import pydantic
    from embedstore_service.schemas import TrainBody

    from embedstore_cli.distill import distill_cmd
    from heads.settings import DISTILL_BY_NAME

    fields = TrainBody.model_json_schema()["properties"]
    for s in PSEUDO_BY_NAME.values():
        assert s.heads == () and fields[s.name]["description"] == s.help
    for bad in (0.0, 1.5):  # the declared bounds: (0, 1]
        with pytest.raises(pydantic.ValidationError, match="fraction"):
            TrainBody(name="x", fraction=bad)
    assert TrainBody(name="x", fraction=1.0, pseudo_label=True).train_options()["fraction"] == 1
    names = {p.name for p in distill_cmd.params}
    assert set(DISTILL_BY_NAME) | set(BY_NAME) <= names
    assert not set(PSEUDO_BY_NAME) & set(BY_NAME)  # no head setting is a run option too
