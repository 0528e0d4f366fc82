"""Value types checked at composition: a value the object it is passed to cannot accept (a word for an
epoch count, a number for a flag) is reported before a run starts, with the override line to blame."""

from __future__ import annotations

import collections.abc as cabc
import enum
import functools
import inspect
import os
import pathlib
import re
import types
import typing
from typing import TYPE_CHECKING, Any, NamedTuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

if TYPE_CHECKING:
    from egolab.launch.txtfile import OverrideLine

# Root keys that egolab.train reads itself (no `_target_` to take a signature from).
ROOT_TYPES: dict[str, Any] = {
    "seed": int,
    "run_index": int,
    "test_only": bool,
    "zero_shot": bool,
    "test_ckpt": str,
    "monitor": str,
    "monitor_mode": str,
    "recipe.world_size": int | None,
    "recipe.adapt": str,
}

_SKIP = object()  # nothing to check: missing or unresolvable outside a run (reported elsewhere), or an object
_PLAIN_INTERPOLATION = re.compile(r"^\$\{([A-Za-z_][\w.]*)\}$")


class TypeProblem(NamedTuple):
    """A value of the wrong type: its dotted key, the full message, and the key it takes its value from
    where it is a plain interpolation (``task.criterion.num_classes: ${model.num_classes}``)."""

    key: str
    message: str
    source: str | None = None


class _Param(NamedTuple):
    hint: Any
    shown: str


def type_problems(cfg: DictConfig) -> list[TypeProblem]:
    """Every value of the composed ``cfg`` whose type the parameter of its ``_target_`` (or, for the root
    keys of :data:`ROOT_TYPES`, egolab.train) cannot accept. Only clear mismatches are reported; values
    that are missing or resolve only inside a run are skipped."""
    raw = OmegaConf.to_container(cfg, resolve=False)
    problems = []
    for key, hint in ROOT_TYPES.items():
        value = _resolved(lambda key=key: OmegaConf.select(cfg, key, default=_SKIP, throw_on_missing=True))
        if value is not _SKIP and not _accepts(value, hint):
            problems.append(TypeProblem(key, f"{key}: expected {_show(hint)}, got {_show_value(value)}"))
    return problems + _walk(cfg, raw, "", raw)


def type_errors(cfg: DictConfig, lines: list[OverrideLine]) -> list[str]:
    """The messages of :func:`type_problems`, each led by the ``file:line`` of the override it comes from
    (the line whose key is the problem's key or its longest parent; a config group counts)."""
    from egolab.launch.txtfile import parse_overrides

    keys = [override.key_or_group.split("@")[0].replace("/", ".") for override in parse_overrides(lines)]
    errors = []
    for problem in type_problems(cfg):
        matches = [
            (len(key), i)
            for i, key in enumerate(keys)
            for blamed in (problem.key, problem.source)
            if blamed and (blamed == key or blamed.startswith(key + "."))
        ]
        if matches:
            line = lines[max(matches)[1]]
            errors.append(f"{line.where}: override {line.text!r}: {problem.message}")
        else:
            errors.append(problem.message)
    return errors


def _walk(node: Any, raw: Any, path: str, raw_root: dict) -> list[TypeProblem]:
    """Check the nodes with a `_target_` under ``node`` (``raw``: the same, unresolved)."""
    problems = []
    if isinstance(node, DictConfig):
        target = raw.get("_target_")
        params = _parameters(target) if isinstance(target, str) else None
        for key, raw_value in raw.items():
            child = f"{path}.{key}" if path else str(key)
            value = _bad_value(node, key, raw_value, params[key].hint) if params and key in params else _SKIP
            if value is not _SKIP:
                source = _source(raw_value, raw_root)
                label = f"{child} (= ${{{source}}})" if source else child
                expected = f"expected {params[key].shown} for {target}({key}=...)"
                problems.append(TypeProblem(child, f"{label}: {expected}, got {_show_value(value)}", source))
            if (
                child != "hydra"
                and not OmegaConf.is_interpolation(node, key)
                and not OmegaConf.is_missing(node, key)
            ):
                problems += _walk(node[key], raw_value, child, raw_root)
    elif isinstance(node, ListConfig):
        for i, raw_value in enumerate(raw):
            if not OmegaConf.is_interpolation(node, i) and not OmegaConf.is_missing(node, i):
                problems += _walk(node[i], raw_value, f"{path}[{i}]", raw_root)
    return problems


def _bad_value(node: DictConfig, key: Any, raw: Any, hint: Any) -> Any:
    """The value of ``node[key]`` (``raw``: unresolved) if ``hint`` does not accept it, else _SKIP.
    Interpolations are resolved only where the unresolved value leaves the type open (resolving is most
    of the time this check takes)."""
    if raw == "???":
        return _SKIP  # missing: reported elsewhere
    text_around = isinstance(raw, str) and "${" in raw and not (raw.startswith("${") and raw.endswith("}"))
    if text_around and _accepts(raw, hint):
        return _SKIP  # text around an interpolation is a str, whatever it resolves to
    plain = isinstance(raw, int | float | None) or (isinstance(raw, str) and "${" not in raw)
    value = raw if plain else _resolved(lambda: node[key])
    return _SKIP if value is _SKIP or _accepts(value, hint) else value


def _source(raw: Any, raw_root: dict) -> str | None:
    """The key a plain interpolation (``${model.num_classes}``) finally takes its value from, if any."""
    source, seen = None, set()
    while isinstance(raw, str) and (match := _PLAIN_INTERPOLATION.match(raw)) and match[1] not in seen:
        source = match[1]
        seen.add(source)
        raw = functools.reduce(
            lambda d, k: d.get(k) if isinstance(d, dict) else None, source.split("."), raw_root
        )
    return source


def _resolved(get: cabc.Callable[[], Any]) -> Any:
    """The plain Python value ``get`` returns; _SKIP where it is missing, does not resolve here, or is a
    node with a `_target_` (an object of its own, checked where it is defined)."""
    try:
        value = get()
        if isinstance(value, DictConfig) and "_target_" in value:
            return _SKIP
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException:
        return _SKIP
    return value


@functools.cache
def _parameters(target: str) -> dict[str, _Param] | None:
    """The keyword parameters of a `_target_` with the type each accepts: its annotation, else the type of
    a bool or numeric default; None where the target does not import or has no signature."""
    from hydra.utils import get_object

    try:
        obj = get_object(target)
        signature = inspect.signature(obj)
    except Exception:  # a bad `_target_` is not a type problem; instantiate reports it
        return None
    try:
        hints = typing.get_type_hints(obj.__init__ if isinstance(obj, type) else obj)
    except Exception:  # unresolvable annotations: fall back to the defaults
        hints = {}
    params = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind not in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
            continue
        default = parameter.default
        if name in hints:
            params[name] = _Param(hints[name], _show(hints[name]))
        elif isinstance(default, bool):
            params[name] = _Param(bool, f"bool (its default is {default!r})")
        elif isinstance(default, int | float):  # an int default (weight_decay=0) takes floats too
            params[name] = _Param(float, f"a number (its default is {default!r})")
    return params


def _accepts(value: Any, hint: Any) -> bool:
    """Whether the plain config ``value`` can be of type ``hint``; unknown or complex hints accept."""
    if hint is typing.Any or (isinstance(value, dict) and "_target_" in value):
        return True  # anything; or a node instantiated into an object of its own
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        return any(_accepts(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(_accepts(value, type(arg)) for arg in args)
    if origin is typing.Annotated:
        return _accepts(value, args[0])
    cls = origin or hint
    if hint is None or cls is type(None):
        return value is None
    if not isinstance(cls, type) or cls is object or issubclass(cls, enum.Enum):
        return True
    if value is None:
        return False
    if cls is bool:
        return isinstance(value, bool)
    if cls is int or cls is float:
        return isinstance(value, int if cls is int else int | float) and not isinstance(value, bool)
    if cls is str:
        return isinstance(value, str)
    if isinstance(value, list):
        return _accepts_list(value, cls, args)
    if isinstance(value, dict):
        return _accepts_dict(value, cls, args)
    if isinstance(value, str) and issubclass(cls, os.PathLike | pathlib.PurePath):
        return True
    try:
        if not isinstance(value, cls):
            return False
    except TypeError:  # a protocol isinstance cannot check
        return True
    if isinstance(value, str) and args and issubclass(cls, cabc.Iterable):
        return all(_accepts(char, args[0]) for char in value)  # a str is a sequence of str only
    return True


def _accepts_list(value: list, cls: type, args: tuple) -> bool:
    if issubclass(cls, cabc.Mapping):
        return False
    if not issubclass(cls, cabc.Iterable) or not args:
        return True
    if cls is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        return len(value) == len(args) and all(_accepts(v, a) for v, a in zip(value, args))
    return all(_accepts(v, args[0]) for v in value)


def _accepts_dict(value: dict, cls: type, args: tuple) -> bool:
    if issubclass(cls, cabc.Sequence | cabc.Set):
        return False
    if not issubclass(cls, cabc.Mapping) or len(args) != 2:
        return True
    return all(_accepts(k, args[0]) and _accepts(v, args[1]) for k, v in value.items())


def _show(hint: Any) -> str:
    """A type hint as written in Python (``int | None``, ``Sequence[float]``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is None or hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    if isinstance(hint, list):
        return "[" + ", ".join(_show(arg) for arg in hint) + "]"
    if origin is typing.Union or origin is types.UnionType:
        return " | ".join(_show(arg) for arg in args)
    if origin is typing.Literal:
        return "Literal[" + ", ".join(repr(arg) for arg in args) + "]"
    if origin is not None and args:
        return f"{_show(origin)}[{', '.join(_show(arg) for arg in args)}]"
    return getattr(hint, "__name__", None) or str(hint)


def _show_value(value: Any) -> str:
    if value is None:
        return "None"
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"
