"""The commands behind ``cli.py``, one module per concern; ``cli.py`` holds the two groups.

Each module parses options and calls one library function per command (``embedstore.ingest``,
``heads.train`` ...); ``_common`` holds what they share: the options declared once, the option
types, the output helpers, and ``Group``, which turns a ``UserError`` into exit 2 and any other
exception (a bug) into exit 1, each as one line.
"""
