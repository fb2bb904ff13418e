"""Every `embedstore ...` / `heads ...` command the README, docs/*.md and the Makefile name still
exists, with every option it uses: read from the click command objects of `cli.py`, nothing run
(no torch, no store), so a renamed command or option fails here instead of in a reader's shell."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("embedstore", "heads")
# a shell token after which the command is over (a pipe, a redirection, the next command)
_END = {"|", "||", "&&", ";", ">", ">>", "2>&1", "&"}
_FENCE = re.compile(r"^(\s*)(```|~~~)\s*([\w+-]*)")
_INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def _programs() -> dict[str, click.Group]:
    import cli  # parses options only: the library is imported on first use

    return {"embedstore": cli.embedstore_cli, "heads": cli.heads_cli}


def command_lines(text: str) -> list[tuple[int, str]]:
    """(line number, command) for each `embedstore`/`heads` invocation in a Markdown text: in
    shell code blocks (fenced without a language or as bash/sh/shell/console, and indented
    blocks), joined over trailing backslashes, and in inline code spans of the prose."""
    found: list[tuple[int, str]] = []
    fence: str | None = None
    shell = False
    pending = last = ""
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m and fence is None:
            fence, shell = m.group(2), m.group(3).lower() in ("", "bash", "sh", "shell", "console")
            continue
        if fence is not None:
            if line.strip().startswith(fence):
                fence, pending = None, ""
                continue
            if not shell:
                continue
            cmd = pending + line.strip()
            if cmd.endswith("\\"):
                pending = cmd[:-1] + " "
                continue
            pending = ""
            if cmd.startswith(("-", "[-")) and last:  # the options of the line above, wrapped
                cmd = " ".join(_tokens(last)[:2]) + " " + cmd
            calls = _invocations(cmd)
            found.extend((n, c) for c in calls)
            last = calls[-1] if calls else ""
            continue
        if line.startswith("    ") and line.strip().split(" ", 1)[0] in PROGRAMS:
            found.extend((n, c) for c in _invocations(line.strip()))  # an indented code block
            continue
        for span in _INLINE.findall(line):
            found.extend((n, c) for c in _invocations(span))
    return found


def _invocations(cmd: str) -> list[str]:
    """The `embedstore ...` / `heads ...` commands in one shell line (after `$ `, `$(BIN)/`)."""
    cmd = re.sub(r"^\$\s+", "", cmd.strip())
    cmd = re.sub(r"\$\(BIN\)/", "", cmd)
    out = []
    for part in re.split(r"\s*(?:&&|;|\|\|)\s*", cmd):
        if part.split(" ", 1)[0] in PROGRAMS and " " in part:
            out.append(part)
    return out


def _tokens(cmd: str) -> list[str]:
    try:
        tokens = shlex.split(cmd, comments=True)
    except ValueError:  # an unclosed quote in a prose span: fall back to words
        tokens = cmd.split()
    for i, t in enumerate(tokens):
        if t in _END:
            return tokens[:i]
    return tokens


def problems(cmd: str) -> list[str]:
    """What in one command line does not exist in the CLI (empty when all of it does)."""
    tokens = _tokens(cmd)
    programs = _programs()
    command: click.Command = programs[tokens[0]]
    path = [tokens[0]]
    i = 1
    while isinstance(command, click.Group):
        words = [t for t in tokens[i:] if not t.startswith("-")]
        if i >= len(tokens) or tokens[i].startswith("-") or not words:
            return []  # the program itself (`heads --help`): nothing more to check
        name = tokens[i].strip("[]")
        if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
            return []  # a placeholder (`embedstore COMMAND`, `heads ...`)
        ctx = click.Context(command, info_name=" ".join(path))
        sub = command.get_command(ctx, name)
        if sub is None:
            return [f"`{' '.join(path)} {name}`: no such command"]
        command, path, i = sub, [*path, name], i + 1
    ctx = click.Context(command, info_name=" ".join(path))
    accepted = set()
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            accepted.update(param.opts, param.secondary_opts)
    found = []
    for t in tokens[i:]:
        opt = t.strip("[]()").split("=", 1)[0]
        if not re.fullmatch(r"--?[A-Za-z][\w-]*", opt):
            continue  # a value, a placeholder, a negative number
        if opt not in accepted:
            found.append(f"`{' '.join(path)}` has no option {opt}")
    return found


def _doc_commands() -> list[tuple[str, int, str]]:
    out = []
    for doc in DOCS:
        for n, cmd in command_lines(doc.read_text()):
            out.append((doc.relative_to(ROOT).as_posix(), n, cmd))
    for n, line in enumerate((ROOT / "Makefile").read_text().splitlines(), 1):
        if line.startswith("\t"):
            out.extend(("Makefile", n, c) for c in _invocations(line))
    return out


def test_the_docs_name_commands_at_all():
    """The parser finds what it should: the README's quick start and its command table."""
    readme = [c for f, _, c in _doc_commands() if f == "README.md"]
    assert len(readme) >= 15, readme
    names = {" ".join(_tokens(c)[:2]) for c in readme}
    assert {"embedstore ingest", "heads train", "embedstore serve", "heads predict"} <= names


@pytest.mark.parametrize("doc", sorted({f for f, _, _ in _doc_commands()}))
def test_every_command_and_option_the_docs_name_exists(doc):
    wrong = [
        f"{f}:{n}: {p}\n    {cmd}"
        for f, n, cmd in _doc_commands()
        if f == doc
        for p in problems(cmd)
    ]
    assert not wrong, "\n".join(wrong)


def test_a_missing_command_or_option_is_caught():
    """The check itself: a broken copy of README lines fails, the right ones pass."""
    text = "\n".join(
        [
            "```bash",
            "embedstore ingest photos/ --store S --views flip,crops5   # fine",
            "embedstore ingestt photos/ --store S",
            "heads train --store S --fold all \\",
            "    --head mlp --epochz 40 --out runs/x",
            "heads predict runs/x a.jpg | head  # --not-an-option after a pipe is not ours",
            "heads predict runs/x a.jpg [--top-k 5]",
            "              [--csv FILE] [--group-byy COLUMN]",
            "```",
            "",
            "Prose with `embedstore lookup photo.jpg --kk 5` inline.",
        ]
    )
    lines = command_lines(text)
    assert [n for n, _ in lines] == [2, 3, 5, 6, 7, 8, 11]
    found = {n: problems(c) for n, c in lines}
    assert found == {
        2: [],
        3: ["`embedstore ingestt`: no such command"],
        5: ["`heads train` has no option --epochz"],
        6: [],
        7: [],
        8: ["`heads predict` has no option --group-byy"],
        11: ["`embedstore lookup` has no option --kk"],
    }


# ---------------------------------------------------------------------- links between the docs

_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+\s+(.*)$", text, flags=re.M)}


@pytest.mark.parametrize("doc", [d.relative_to(ROOT).as_posix() for d in DOCS])
def test_every_relative_link_reaches_a_file_and_heading(doc):
    path = ROOT / doc
    wrong = []
    for target in _LINK.findall(path.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            wrong.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            wrong.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not wrong, "\n".join(wrong)
