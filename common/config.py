"""``--config FILE``: a TOML file that says what the command-line options say.

Each key is an option's long name (``max-viewers`` or ``max_viewers``), its value of the
option's kind: a string, a number, ``true``/``false`` for a switch, a list for an option
that may be repeated. The file becomes options placed before the command line's, so
the command line wins: for a repeatable option given on the command line, the file's
values are dropped, not added to. Each tool may map keys of its own onto options
(``Extra``: the sender's ``[cameras]`` table onto ``--source NAME=SPEC``).

Every key and value is checked against the tool's own parser before anything starts:
an unknown key, a wrong type or a value the option refuses is one line naming the key
and the file (exit 2). Read with the standard library's ``tomllib``.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cli import CliError

CONFIG_OPTION = "--config"
# Options that make no sense in a file: they are about this one run of the tool.
NOT_IN_FILE = frozenset({"help", "config", "list_sources"})

# A tool's own keys: (key, value, file) -> the arguments it stands for.
Extra = Callable[[str, Any, Path], list[str]]


class ConfigError(CliError):
    """A config file that cannot be used; one line naming the file (and the key)."""


def add_argument(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        CONFIG_OPTION,
        metavar="FILE",
        help=f"read options from this TOML file (see {example}); the command line wins",
    )


def config_path(argv: Sequence[str]) -> Path | None:
    """``--config``'s value in ``argv`` (None without one), before the full parse."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument(CONFIG_OPTION)
    known, _ = pre.parse_known_args(list(argv))
    if known.config is None:
        return None
    if not known.config.strip():
        raise ConfigError(f"{CONFIG_OPTION}: cannot read '': no file named")
    return Path(known.config)


def load(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options by ``dest``, and by their long names with dashes or underscores."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse has no public list of its actions
        for option in action.option_strings:
            if option.startswith("--"):
                name = option[2:]
                found[name] = action
                found[name.replace("-", "_")] = action
    return found


def _flag(action: argparse.Action) -> str:
    return next(o for o in action.option_strings if o.startswith("--"))


def _check(action: argparse.Action, key: str, value: object, path: Path) -> str:
    """One value, as text for the command line, checked the way the option checks it."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kind = type(value).__name__ if not isinstance(value, bool) else "true/false"
        raise ConfigError(f"{path}: {key}: expected a string or a number, not {kind}")
    text = str(value)
    convert = action.type
    if callable(convert):
        try:
            convert(text)
        except (argparse.ArgumentTypeError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: {key}: {str(exc) or f'invalid value {text!r}'}") from None
    if action.choices is not None and text not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ConfigError(f"{path}: {key}: {text!r} is not one of {choices}")
    return text


def to_argv(
    parser: argparse.ArgumentParser,
    data: Mapping[str, Any],
    path: Path,
    extra: Mapping[str, Extra] | None = None,
    positional: str | None = None,
) -> tuple[list[str], list[str]]:
    """The options ``data`` stands for, and its positional arguments (the key named
    ``positional``, a list); ConfigError for anything the parser would not take."""
    actions = _actions(parser)
    options: list[str] = []
    positionals: list[str] = []
    for key, value in data.items():
        if extra and key in extra:
            options += extra[key](key, value, path)
            continue
        if positional is not None and key == positional:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: {key}: expected a list of strings")
            positionals += value
            continue
        action = actions.get(key)
        if action is None or action.dest in NOT_IN_FILE:
            raise ConfigError(f"{path}: unknown key {key!r}")
        flag = _flag(action)
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key}: expected true or false")
            if value == isinstance(action, argparse._StoreTrueAction):
                options.append(flag)
        elif isinstance(action, argparse._CountAction):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{path}: {key}: expected a whole number >= 0")
            options += [flag] * value
        elif isinstance(action, argparse._AppendAction):
            values = value if isinstance(value, list) else [value]
            for item in values:
                options += [flag, _check(action, key, item, path)]
        else:
            options += [flag, _check(action, key, value, path)]
    return options, positionals


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The ``dest`` of every option the command line gives."""
    actions = {o: a for a in parser._actions for o in a.option_strings}
    given = set()
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in actions:
            given.add(actions[name].dest)
    return given


def _drop(parser: argparse.ArgumentParser, options: list[str], dests: set[str]) -> list[str]:
    """``options`` without the repeatable ones in ``dests`` (with their values)."""
    actions = {o: a for a in parser._actions for o in a.option_strings}
    kept: list[str] = []
    skip = False
    for arg in options:
        if skip:
            skip = False
            continue
        action = actions.get(arg)
        if action is not None and action.dest in dests:
            skip = action.nargs != 0
            continue
        kept.append(arg)
    return kept


def merge(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    extra: Mapping[str, Extra] | None = None,
    positional: str | None = None,
) -> tuple[list[str], list[str]]:
    """``argv`` with the options of ``--config``'s file in front of it (``argv`` alone
    without one), and the file's positional arguments (the key ``positional``), which
    the tool uses when the command line gives none."""
    argv = list(argv)
    path = config_path(argv)
    if path is None:
        return argv, []
    options, positionals = to_argv(parser, load(path), path, extra, positional)
    repeated = {a.dest for a in parser._actions if isinstance(a, argparse._AppendAction)} & _given(
        parser, argv
    )
    return [*_drop(parser, options, repeated), *argv], positionals
