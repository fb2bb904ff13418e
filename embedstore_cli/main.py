"""Command line: ``embedstore ...`` and ``heads ...`` (the entry points of pyproject.toml).

This module only declares the two groups and lists their commands; the commands live beside it
in ``embedstore_cli/`` (one module per concern) and are plain library calls underneath
(``embedstore.ingest``, ``heads.train`` ...). Exit codes: 0 done; 1 nothing could be done (no
image ingested or predicted) or a bug (one line; the traceback with ``EMBEDSTORE_DEBUG=1``);
2 a user error (a bad option, argument, file or store: ``embedstore.errors.UserError``).
"""

from __future__ import annotations

import click

from embedstore_cli import (
    distill,
    evaluate,
    explore,
    predict,
    search,
    serve,
    store,
    text,
    train,
)
from embedstore_cli._common import CONTEXT, Group


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="embedstore")
def embedstore_cli() -> None:
    """Embed image collections with frozen backbones into a Lance store.

    \b
    Example:
      embedstore ingest ../shared/data/flowers12 --store flowers
      embedstore info --store flowers
      embedstore lookup photo.jpg --store flowers --k 5
    """


@click.group(cls=Group, context_settings=CONTEXT)
@click.version_option(package_name="embedstore")
def heads_cli() -> None:
    """Train, evaluate, ensemble and predict with heads on stored embeddings.

    \b
    Example:
      embedstore split --store flowers --folds 5
      heads train --store flowers --fold all --head mlp --out runs/mlp
      heads eval runs/mlp
    """


for _cmd in (
    store.ingest_cmd,
    store.info_cmd,
    store.check_cmd,
    store.drop_column_cmd,
    store.split_cmd,
    store.taxonomy_cmd,
    explore.lookup_cmd,
    search.search_cmd,
    explore.index_cmd,
    explore.backbones_cmd,
    explore.duplicates_cmd,
    explore.map_cmd,
    text.embed_texts_cmd,
    text.convert_open_clip_cmd,
    serve.serve_cmd,
):
    embedstore_cli.add_command(_cmd)
for _cmd in (
    train.train_cmd,
    train.tune_cmd,
    distill.distill_cmd,
    train.hierarchy_cmd,
    evaluate.eval_cmd,
    evaluate.ensemble_cmd,
    predict.predict_cmd,
    evaluate.openset_cmd,
    evaluate.issues_cmd,
    evaluate.report_cmd,
    evaluate.unknowns_cmd,
):
    heads_cli.add_command(_cmd)

if __name__ == "__main__":  # pragma: no cover
    embedstore_cli()
