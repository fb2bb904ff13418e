"""Trained runs on disk: the run format (``config.json`` as :class:`RunConfig` /
:class:`EnsembleConfig`, safetensors, ``val.parquet``), loading (``load`` gives a :class:`Run`
or an :class:`Ensemble`, both :class:`Predictor`) and a folder of runs as the service sees it.

>>> from heads.runs import load, list_runs, read_run_config
"""

from heads.runs._compiled import CompiledPredictor, compile_predictor
from heads.runs._config import (
    EnsembleConfig,
    RunConfig,
    StoreRef,
    parse_config,
    read_run_config,
    write_run_config,
)
from heads.runs._folder import (
    PARTIAL,
    collect_partial_runs,
    list_runs,
    read_eval,
    replace_run,
    run_checksum,
    work_dir,
)
from heads.runs._loaded import Ensemble, Predictor, Run, load
from heads.runs._rundir import RUN_FORMAT, read_pseudo, read_val
from heads.runs._wrapped import WrappedPredictor

__all__ = [
    "PARTIAL",
    "CompiledPredictor",
    "RUN_FORMAT",
    "Ensemble",
    "EnsembleConfig",
    "Predictor",
    "Run",
    "RunConfig",
    "StoreRef",
    "WrappedPredictor",
    "list_runs",
    "load",
    "parse_config",
    "read_eval",
    "read_pseudo",
    "read_run_config",
    "read_val",
    "replace_run",
    "run_checksum",
    "collect_partial_runs",
    "compile_predictor",
    "work_dir",
    "write_run_config",
]
