"""The command line's entry module at the repository root: ``python cli.py ...`` runs
``embedstore ...``. The groups live in ``embedstore_cli.main``, which the installed
``embedstore`` and ``heads`` commands run (the wheel installs distinctive names only:
``embedstore``, ``heads``, ``embedstore_cli``, ``embedstore_service``).
"""

from embedstore_cli.main import embedstore_cli, heads_cli

__all__ = ["embedstore_cli", "heads_cli"]

if __name__ == "__main__":  # pragma: no cover
    embedstore_cli()
