"""Configuration errors as one line: which argument, what is wrong, and how to fix it.

Every data module, generator and model checks its arguments when it is built (and a data module its
files when it prepares them) and raises a ValueError or FileNotFoundError with a one-line message that
says what is wrong and what to do. jsonargparse builds those objects from the config and wraps such an
error in its own ("Does not validate against any of the Union subtypes", followed by the whole config
namespace); Lightning shows a data module's errors as a traceback. :func:`config_error` finds the
object's own error in the exception chain and the config argument it is about, so that
``dfn.cli.main`` prints ``dfn: data.init_args.path: ... not found; fetch it with ...`` and exits with
status 2. ``DFN_DEBUG=1`` keeps the traceback.

The argument is found without reading jsonargparse's text: the object is the one whose method raised
(its frame's ``self``), its config entry the one whose ``class_path`` is that object's class, and the
argument the first of its ``init_args`` that the message names -- by name (``kernel_size must be ...``)
or by value (``data/samples/carphone_pristine.mp4 not found``).
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

DEBUG_VARIABLE = "DFN_DEBUG"
BAD_INPUT = (ValueError, FileNotFoundError)  # what the project's argument and file checks raise


class ConfigError(Exception):
    """A bad value or missing file in the configuration: ``argument`` (e.g. ``model.init_args.lr``, or
    None when it cannot be told) and the checking code's own one-line ``message``."""

    def __init__(self, argument: str | None, message: str) -> None:
        message = " ".join(line.strip() for line in message.splitlines() if line.strip())  # one line
        self.argument, self.message = argument, message
        super().__init__(f"{argument}: {message}" if argument else message)


def debugging() -> bool:
    """``DFN_DEBUG=1`` (or true/yes/on): show tracebacks instead of one-line errors."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() in ("1", "true", "yes", "on")


def _frames(tb: TracebackType | None) -> Iterator[TracebackType]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


def _raised_by_jsonargparse(err: BaseException) -> bool:
    frames = list(_frames(err.__traceback__))
    return bool(frames) and frames[-1].tb_frame.f_globals.get("__name__", "").startswith("jsonargparse")


def own_error(err: BaseException) -> BaseException | None:
    """The first error along `err`'s chain (itself, then what it was raised from) that jsonargparse did
    not raise: the checking code's own, which jsonargparse wraps when it builds an object."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if not _raised_by_jsonargparse(err):
            return err
        err = err.__cause__ or err.__context__
    return None


def raising_object(err: BaseException, methods: tuple[str, ...], classes: set[type]) -> Any:
    """The ``self`` of the outermost frame in `err`'s traceback that runs one of `methods` of an object
    of one of `classes` (for ``__init__``: the object being built, by its most derived class even when
    a base class's ``__init__`` raised); None when there is none."""
    for tb in _frames(err.__traceback__):
        frame = tb.tb_frame
        if frame.f_code.co_name in methods and type(frame.f_locals.get("self")) in classes:
            return frame.f_locals["self"]
    return None


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def configured_classes(config: dict, groups: dict[str, type], key: str = ""
                       ) -> Iterator[tuple[str, str, type, dict]]:
    """(config key, key of its arguments, class, init args) of every object the config builds: each
    ``class_path`` entry (e.g. ``model.init_args.generator``, arguments under ``.init_args``) and each
    of `groups` (key -> class, e.g. ``gifs``, arguments right under it)."""
    if not key:
        for name, cls in groups.items():
            if isinstance(config.get(name), dict):
                yield name, name, cls, config[name]
    if isinstance(config, dict):
        if isinstance(config.get("class_path"), str):
            cls = _import(config["class_path"])
            if cls is not None:
                yield key, f"{key}.init_args", cls, config.get("init_args") or {}
        for name, value in config.items():
            yield from configured_classes(value, {}, f"{key}.{name}" if key else name)
    elif isinstance(config, list):
        for i, value in enumerate(config):
            yield from configured_classes(value, {}, f"{key}[{i}]")


def _path_like(value: Any) -> bool:
    return isinstance(value, str) and len(value) > 1 and ("/" in value or os.sep in value or bool(Path(value).suffix))


def named_argument(message: str, init_args: dict) -> str | None:
    """The argument of `init_args` that `message` is about: the first whose value, a path, it quotes (not
    inside a longer path; a trailing slash allowed), else the first it names as a word. Paths first: a
    path is specific, while a name such as ``download`` may be an ordinary word of the message."""
    for by_value in (True, False):
        found = []
        for name, value in init_args.items():
            if by_value and not _path_like(value):
                continue
            pattern = (rf"(?<![\w/.-]){re.escape(value.rstrip('/'))}/?(?![\w/-])" if by_value
                       else rf"(?<!\w){re.escape(name)}(?!\w)")
            match = re.search(pattern, message)
            if match:
                found.append((match.start(), name))
        if found:
            return min(found, key=lambda position_name: position_name[0])[1]
    return None


def config_error(err: BaseException, config: dict, groups: dict[str, type], methods: tuple[str, ...] = ("__init__",),
                 kinds: tuple[type[BaseException], ...] = BAD_INPUT, anywhere: bool = True) -> ConfigError | None:
    """`err` as a one-line :class:`ConfigError` when it is (or wraps) one of `kinds` raised by the
    checking code; None otherwise (a bug, whose traceback should be seen).

    `config`: the subcommand's resolved config as a dict, `groups` its class groups (see
    :func:`configured_classes`). The argument is named when the error was raised in one of `methods`
    of an object the config builds; with ``anywhere=False`` an error raised elsewhere gives None.
    ``methods``: ``__init__`` while the objects are built, ``prepare_data``/``setup`` for a data
    module's files."""
    own = own_error(err)
    if not isinstance(own, kinds):
        return None
    message = str(own).strip() or type(own).__name__
    built = list(configured_classes(config, groups))
    target = raising_object(own, methods, {cls for _, _, cls, _ in built})
    for key, args_key, cls, init_args in built:
        if target is not None and type(target) is cls:
            name = named_argument(message, init_args)
            return ConfigError(f"{args_key}.{name}" if name else key, message)
    return ConfigError(None, message) if anywhere else None
