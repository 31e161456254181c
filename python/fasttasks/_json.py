"""JSON encoding of task arguments and results.

The rules are Django's (``normalize_json``: mappings become dicts, other sequences become lists, ``bytes``
become UTF-8 text, anything else is rejected), plus three that come from storing the text in a real JSON
column and that we apply on every database so that behaviour does not depend on the vendor:

* NaN and +/-infinity are rejected (PostgreSQL ``jsonb`` cannot store them; the JSON standard has no
  such numbers);
* strings containing NUL (``"\\x00"``) are rejected (``jsonb`` cannot store ``\\u0000``);
* strings containing lone surrogates are rejected (they are not encodable as UTF-8).

Errors name the offending argument, e.g. ``kwargs['when']`` or ``args[0]['items'][3]``, so the caller can
tell which one to fix. Nothing is written to the database before every argument has been encoded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["dumps", "encode_arguments", "loads"]

_SEPARATORS = (",", ":")
_encoder = json.JSONEncoder(separators=_SEPARATORS, allow_nan=False, ensure_ascii=False)
_decoder = json.JSONDecoder()


def _reject(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# ``JSONEncoder.encode`` builds a new C encoder on every call, a microsecond that shows when every
# enqueued task and every result goes through here; make it once (same arguments as ``encode`` passes,
# without cycle detection: a cycle ends in RecursionError, which the callers treat as unencodable).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_c_encode = (
    _c_make_encoder(None, _reject, json.encoder.encode_basestring, None, ":", ",", False, False, False)
    if _c_make_encoder is not None
    else None
)


def dumps(value: Any) -> str:
    """Compact JSON text; NaN and infinity raise ``ValueError``."""
    if _c_encode is not None and type(value) in (list, dict, tuple):
        return "".join(_c_encode(value, 0))
    return _encoder.encode(value)


def loads(text: str | bytes | bytearray) -> Any:
    """Parse JSON text (``bytes`` are decoded as UTF-8)."""
    # The worker parses the arguments of every task; most calls have no args or no kwargs.
    if text == "[]":
        return []
    if text == "{}":
        return {}
    if not isinstance(text, str):
        text = bytes(text).decode("utf-8")
    return _decoder.decode(text)


def encode_arguments(args: Sequence[Any], kwargs: Mapping[str, Any], *, where: str = "") -> tuple[str, str]:
    """Return the JSON texts of ``args`` (a JSON array) and ``kwargs`` (a JSON object).

    Raise ``TypeError`` or ``ValueError`` naming the offending argument when a value cannot be stored.
    ``where`` is appended to the argument name in messages (``enqueue_many`` passes ``" (item 3)"``).
    """
    args_type = type(args)
    if args_type is not tuple and args_type is not list:  # skip the ABC checks for the usual types
        if isinstance(args, (str, bytes, bytearray)) or not isinstance(args, Sequence):
            raise TypeError(
                f"Task positional arguments{where} must be a sequence, not {type(args).__name__}."
            )
    if type(kwargs) is not dict and not isinstance(kwargs, Mapping):
        raise TypeError(f"Task keyword arguments{where} must be a mapping, not {type(kwargs).__name__}.")
    if not kwargs and not args:
        return "[]", "{}"
    for key in kwargs:
        if type(key) is not str:
            raise TypeError(f"Task keyword argument names{where} must be strings, got {key!r}.")

    # Fast path: plain lists/tuples/dicts of plain values are encoded by the C encoder directly and
    # give the same text as normalize_json followed by json.dumps.
    args_text = _fast_dumps(args)
    kwargs_text = _fast_dumps(kwargs) if args_text is not None else None
    if args_text is not None and kwargs_text is not None:
        return args_text, kwargs_text

    # Slow path: normalize value by value to find (and name) the offending one, or to apply the
    # conversions json.dumps does not do itself (bytes, non-dict mappings, other sequences).
    normalized_args = [_normalize(value, f"args[{i}]", where, set()) for i, value in enumerate(args)]
    normalized_kwargs = {
        key: _normalize(value, f"kwargs[{key!r}]", where, set()) for key, value in kwargs.items()
    }
    return dumps(normalized_args), dumps(normalized_kwargs)


def _fast_dumps(value: Any) -> str | None:
    try:
        text = dumps(value)
    except (TypeError, ValueError, RecursionError):
        return None
    # "\u0000" can only come from a NUL character (a literal backslash is written as "\\"), but a false
    # positive merely sends us to the exact slow path.
    if "\\u0000" in text:
        return None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return text


def _message(path: str, where: str, detail: str) -> str:
    return f"Task argument {path}{where} is not JSON-serializable: {detail}"


def _check_str(value: str, path: str, where: str) -> str:
    if "\x00" in value:
        raise ValueError(_message(path, where, "strings cannot contain NUL characters ('\\x00')."))
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                _message(path, where, "strings cannot contain lone surrogates (not valid UTF-8).")
            ) from None
    return value


def _decode_bytes(value: bytes, path: str, where: str) -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(_message(path, where, f"Unsupported value: {type(value)}")) from None
    return _check_str(text, path, where)


def _check_float(value: float, path: str, where: str) -> float:
    if not math.isfinite(value):
        raise ValueError(
            _message(path, where, f"Out of range float values are not JSON compliant: {value!r}")
        )
    return value


def _normalize_key(key: Any, path: str, where: str) -> Any:
    if isinstance(key, bytes):
        return _decode_bytes(key, f"{path} key {key!r}", where)
    if isinstance(key, str):
        return _check_str(key, f"{path} key {key!r}", where)
    if isinstance(key, float):
        return _check_float(key, f"{path} key {key!r}", where)
    if key is None or isinstance(key, int):  # bool is an int
        return key
    raise TypeError(
        _message(
            f"{path} key {key!r}",
            where,
            f"Unsupported type: {type(key)} (keys must be str, int, float, bool or None)",
        )
    )


def _normalize(value: Any, path: str, where: str, active: set[int]) -> Any:
    """Mirror ``django.utils.json.normalize_json``, but name the path of a bad value."""
    if isinstance(value, Mapping):
        marker = id(value)
        if marker in active:
            raise ValueError(_message(path, where, "circular reference detected."))
        active.add(marker)
        try:
            normalized: dict[Any, Any] = {}
            for key, item in value.items():
                normalized[_normalize_key(key, path, where)] = _normalize(
                    item, f"{path}[{key!r}]", where, active
                )
            return normalized
        finally:
            active.discard(marker)
    if isinstance(value, bytes):
        return _decode_bytes(value, path, where)
    if isinstance(value, str):
        return _check_str(value, path, where)
    if isinstance(value, float):
        return _check_float(value, path, where)
    if value is None or isinstance(value, int):  # bool is an int
        return value
    if isinstance(value, Sequence):
        marker = id(value)
        if marker in active:
            raise ValueError(_message(path, where, "circular reference detected."))
        active.add(marker)
        try:
            return [_normalize(item, f"{path}[{i}]", where, active) for i, item in enumerate(value)]
        finally:
            active.discard(marker)
    raise TypeError(_message(path, where, f"Unsupported type: {type(value)}"))
