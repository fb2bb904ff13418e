"""The one place SQL text is written: the user's ``where`` checked as one predicate
(:func:`check_predicate`), string literals and id lists escaped, and the filter of a read."""

from __future__ import annotations

import re
from pathlib import Path

from embedstore.store._lance import EMB_PREFIX, HOLDOUT, Part, StoreError, plain

_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sql_in(column: str, values: list[str]) -> str:
    """``column IN ('a', 'b')`` with every value escaped as a string literal (``false`` for
    none): the one way a list of ids or paths read from the store goes into a filter."""
    if not values:
        return "false"
    return f"{quote_column(column)} IN ({', '.join(sql_str(v) for v in values)})"


def sql_str(s: str) -> str:
    """``s`` as an SQL string literal (quotes doubled); StoreError for anything not a string."""
    if not isinstance(s, str):
        raise StoreError(f"expected a text value in a filter, not {type(s).__name__} {s!r}")
    return "'" + s.replace("'", "''") + "'"


def quote_column(name: str) -> str:
    return name if _PLAIN_NAME.match(name) else "`" + name.replace("`", "``") + "`"


_STATEMENT = re.compile(
    r"^\s*(select|insert|update|delete|drop|create|alter|with|attach|pragma|copy)\b", re.I
)


def check_predicate(where: str) -> str:
    """``where`` if it is one boolean expression; StoreError otherwise (never pasted unchecked).

    Quotes must close, parentheses balance (so ``"a = 1) OR (1=1"`` cannot escape the
    parentheses the store puts around it), and there is no ``;`` or statement.
    """
    if not isinstance(where, str) or not where.strip():
        raise StoreError(
            "invalid --where expression: it is empty; give a predicate such as \"label = 'daisy'\""
        )
    depth, quote = 0, None
    for ch in where:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"`":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                break
        elif ch == ";":
            raise StoreError(
                f"invalid --where expression {where!r}: ';' is not allowed; give one predicate"
            )
    if quote:
        raise StoreError(f"invalid --where expression {where!r}: a {quote} quote is not closed")
    if depth != 0:
        raise StoreError(f"invalid --where expression {where!r}: unbalanced parentheses")
    if _STATEMENT.match(where):
        raise StoreError(
            f"invalid --where expression {where!r}: give one predicate on columns, not a statement"
        )
    return where


def _looks_like_predicate_error(reason: str) -> bool:
    low = reason.lower()
    return any(
        w in low
        for w in (
            "sql",
            "parse",
            "column",
            "schema",
            "type",
            "expression",
            "filter",
            "field",
            "cast",
            "invalid",
        )
    )


def row_filter(
    path: Path,
    ds,
    where: str | None = None,
    *,
    ids: list[str] | None = None,
    labelled: bool = False,
    part: Part | None = None,
    embedded: tuple[str, ...] | list[str] = (),
) -> str | None:
    """The one place SQL text is built: the user's predicate in parentheses, AND the selectors."""
    terms = [f"({check_predicate(where)})"] if where is not None else []
    if ids is not None:
        terms.append(sql_in("id", ids))
    if labelled:
        terms.append("label IS NOT NULL")
    if part is not None:
        if "fold" not in ds.schema.names:
            raise StoreError(
                f"{path}: the store has no folds; run `embedstore split --store {path}` first"
            )
        terms.append({"holdout": f"fold = {HOLDOUT}", "folds": "fold >= 0"}[part])
    check_columns(path, ds, list(embedded))
    terms += [f"{quote_column(c)} IS NOT NULL" for c in embedded]
    return " AND ".join(terms) if terms else None


def unlabelled_predicates(where: str | None, unlabelled: str | None) -> tuple[str, str]:
    """``(labelled, unlabelled)``: two predicates splitting the rows of ``where`` (None: all)
    into those a training reads with their labels and those it treats as unlabelled.

    ``unlabelled`` None: the rows with a label / the rows without one. Else the user's
    predicate (e.g. ``"split = 'test'"``): the rows it does not select (NULL counts as not
    selected) / the rows it selects, whose stored labels are then never read.

    >>> unlabelled_predicates(None, "split = 'test'")
    ("((split = 'test') IS NOT TRUE)", "((split = 'test') IS TRUE)")
    """
    scope = [f"({check_predicate(where)})"] if where is not None else []
    if unlabelled is None:
        pair = ("label IS NOT NULL", "label IS NULL")
    else:
        u = check_predicate(unlabelled)
        pair = (f"(({u}) IS NOT TRUE)", f"(({u}) IS TRUE)")
    return " AND ".join([*scope, pair[0]]), " AND ".join([*scope, pair[1]])


def check_columns(path: Path, ds, columns: list[str]) -> None:
    unknown = [c for c in columns if c not in ds.schema.names]
    if unknown:
        raise StoreError(
            f"{path}: no column(s) {', '.join(unknown)}; columns: "
            f"{', '.join(n for n in ds.schema.names if not n.startswith(EMB_PREFIX))}"
        )


def read_error(path: Path, e: Exception, where: str | None) -> StoreError:
    reason = plain(e)
    damaged = any(w in str(e) for w in ("LanceError(IO)", "Not found", "No such file"))
    if where is not None and not damaged and _looks_like_predicate_error(reason):
        return StoreError(f"invalid --where expression {where!r}: {reason}")
    return StoreError(
        f"{path}: cannot read the store ({reason}); it is damaged or was written by a "
        f"newer version: run `embedstore check --store {path}` to see which"
    )
