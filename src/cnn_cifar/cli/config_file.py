"""train_cli's settings in a TOML file: ``--config FILE`` reads one (any flag, by its dest name or dashed
name; flags on the command line win) and ``--dump-config FILE`` writes the effective settings as one."""
from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path

NOT_IN_FILES = ("config", "dump_config", "help")


class ConfigFileError(ValueError):
    """A config file is missing, not TOML, or names an unknown setting or a bad value (one line)."""


def config_argv(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """The command-line flags that the settings in ``path`` stand for, checked by ``parser`` itself (so a bad
    value gets the flag's own message, prefixed by the file)."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigFileError(f"{path} is not a readable TOML file: {exc}") from None
    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in NOT_IN_FILES}
    argv: list[str] = []
    for key, value in data.items():
        action = actions.get(key.replace("-", "_"))
        if action is None:
            raise ConfigFileError(f"{path}: unknown setting {key!r} (use a train_cli flag's name, e.g. lr-schedule)")
        argv += _flag(action, value, f"{path}: {key}")
    _check(parser, argv, path)
    return argv


def _flag(action: argparse.Action, value, where: str) -> list[str]:
    flag = action.option_strings[0]
    if isinstance(action, (argparse._StoreTrueAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ConfigFileError(f"{where} must be true or false, got {value!r}")
        if isinstance(action, argparse.BooleanOptionalAction):
            return [flag if value else f"--no-{flag[2:]}"]
        return [flag] if value else []
    if isinstance(value, (dict, bool)) or (isinstance(value, list) and action.nargs in (None, "?")):
        raise ConfigFileError(f"{where} cannot be {value!r}")
    items = value if isinstance(value, list) else [value]
    return [flag, *(str(v) for v in items)]


def _check(parser: argparse.ArgumentParser, argv: list[str], path: str) -> None:
    """Parse the file's flags alone, turning the parser's error into a ConfigFileError naming the file."""
    def fail(message: str):
        raise ConfigFileError(f"{path}: {message}")
    parser.error, saved = fail, parser.error
    try:
        parser.parse_args(argv)
    finally:
        parser.error = saved


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return ("inf" if v > 0 else "-inf") if math.isinf(v) else "nan" if math.isnan(v) else repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(e) for e in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)           # a TOML basic string
    return str(v)


def write_config(settings: dict, path: str, header: str = "") -> Path:
    """``settings`` (dest name -> value) as TOML with dashed keys; None values are left out (= the default)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k.replace('_', '-')} = {_toml_value(v)}" for k, v in settings.items() if v is not None]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    return out
