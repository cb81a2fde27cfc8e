"""MkDocs hook: the CLI reference page (cli.md), generated at build time from each entry point's argparse parser.

Nothing is written to disk: the page is added to the build's files in ``on_files``. Every flag of every entry
point is listed with its metavar, its default and its help text, grouped as the parser groups them; the help
text is expanded by the parser's own HelpFormatter (train_cli's lists the models with their parameter counts),
so the page says what ``--help`` says. Each entry point's verbatim ``--help`` follows its tables.
"""
from __future__ import annotations

import argparse
import contextlib
import html
import importlib
import os
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File

PAGE = "cli.md"
HELP_COLUMNS = "100"          # the width of the verbatim --help blocks

# (entry script, installed command, module holding build_parser)
ENTRY_POINTS = [
    ("train_cli.py", "cnn-train", "cnn_cifar.cli.train_args"),
    ("test_cli.py", "cnn-test", "cnn_cifar.cli.test"),
    ("predict_cli.py", "cnn-predict", "cnn_cifar.cli.predict"),
    ("visualize_cli.py", "cnn-plot", "cnn_cifar.cli.visualize"),
    ("convert_cli.py", "cnn-convert", "cnn_cifar.cli.convert"),
]

INTRO = """\
# CLI reference

Every flag of every entry point, generated from the entry point's argument parser (`build_parser()` in
`src/cnn_cifar/cli/`) each time the site is built, so it says what `--help` says. Each script runs as
`uv run src/NAME.py ...` and is also installed as a command (`uv run cnn-train ...`).

A default of **–** means the flag has no fixed default: left out, the setting comes from the model's recipe
(see [Training recipes](training.md#per-model-defaults)) or from the run's settings, and the value used is
given in brackets at the end of its help (per model where the recipes differ). With `--resume`, a setting
left out is the checkpoint's.
"""

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@contextlib.contextmanager
def _environment():
    """Help texts that do not depend on the machine building the docs: a fixed width, no colour, and the
    parsers' defaults rather than this shell's (--backend reads $CNN_CIFAR_BACKEND)."""
    saved = {k: os.environ.get(k) for k in ("COLUMNS", "NO_COLOR", "FORCE_COLOR", "CNN_CIFAR_BACKEND")}
    os.environ.update(COLUMNS=HELP_COLUMNS, NO_COLOR="1")
    os.environ.pop("FORCE_COLOR", None)
    os.environ.pop("CNN_CIFAR_BACKEND", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _default(action: argparse.Action) -> str:
    d = action.default
    if d is argparse.SUPPRESS or action.help is argparse.SUPPRESS:
        return ""
    if action.nargs == 0 and isinstance(d, bool):          # store_true / store_false
        return "on" if d else "off"
    if d is None:
        return "–"
    if isinstance(d, (list, tuple)):
        return " ".join(str(v) for v in d)
    return str(d)


def _help(formatter: argparse.HelpFormatter, action: argparse.Action) -> str:
    """The help text as --help prints it (the formatter's own expansion), unwrapped."""
    if formatter._get_help_string(action) is None:
        return ""
    return " ".join(formatter._expand_help(action).split())


def _anchor(script: str, action: argparse.Action) -> str:
    name = (action.option_strings[-1] if action.option_strings else action.dest).lstrip("-")
    return f"{script.removesuffix('.py').replace('_', '-')}-{name}"


def _table(script: str, parser: argparse.ArgumentParser, actions: list[argparse.Action]) -> str:
    formatter = parser._get_formatter()
    rows = ["<table>", "<thead><tr><th>flag</th><th>default</th><th>help</th></tr></thead>", "<tbody>"]
    for action in actions:
        if action.help is argparse.SUPPRESS:
            continue
        invocation = _ANSI.sub("", formatter._format_action_invocation(action))
        flag = "<br>".join(f"<code>{html.escape(part)}</code>" for part in invocation.split(", "))
        default = _default(action)
        if action.required:
            default = "required"
        text = html.escape(_ANSI.sub("", _help(formatter, action)))
        rows.append(f'<tr id="{_anchor(script, action)}"><td>{flag}</td>'
                    f"<td>{html.escape(default)}</td><td>{text}</td></tr>")
    rows += ["</tbody>", "</table>"]
    return "\n".join(rows)


def _section(script: str, command: str, module: str) -> str:
    parser: argparse.ArgumentParser = importlib.import_module(module).build_parser()
    out = [f"## {script}", "",
           f"`uv run src/{script}`, installed as `{command}`. Parser: `{module}.build_parser()`.", ""]
    if parser.description:
        out += [html.escape(parser.description), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help is not argparse.SUPPRESS]
        if not actions:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", f"{script.removesuffix('.py')} {group.title}".lower()).strip("-")
        out += [f"### {group.title} {{#{slug}}}", ""]
        if group.description:
            out += [html.escape(group.description), ""]
        for mutex in parser._mutually_exclusive_groups:
            members = [a for a in mutex._group_actions if a in actions]
            if members:
                names = ", ".join(f"`{a.option_strings[-1]}`" for a in members)
                out += [f"{'Exactly' if mutex.required else 'At most'} one of {names}.", ""]
        out += [_table(script, parser, actions), ""]
    usage = _ANSI.sub("", parser.format_help()).rstrip()
    out += [f'??? example "`{script} --help`"', "", "    ```text"]
    out += [f"    {line}".rstrip() for line in usage.splitlines()]
    out += ["    ```", ""]
    return "\n".join(out)


def render() -> str:
    with _environment():
        return INTRO + "\n" + "\n".join(_section(*entry) for entry in ENTRY_POINTS)


def on_config(config, **kwargs):
    src = str(Path(config.config_file_path).resolve().parent / "src")
    if src not in sys.path:
        sys.path.insert(0, src)          # the checkout's package, whatever is installed
    return config


def on_files(files, config, **kwargs):
    files.append(File.generated(config, PAGE, content=render()))
    return files
