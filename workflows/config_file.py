"""A config file's text into a dict, every way it can be unreadable named in one line (config.py reads it here).

- UTF-8 (a byte-order mark is allowed); anything else is named with the line and column of the first bad byte.
- Comments: a line whose first non-blank characters are `#` or `//` is a comment (DP-GEN's example configs
  explain each key on such a line). The pre-pass blanks those lines and keeps the line breaks, so the line
  and column of any JSON error stay those of the file. Only whole lines: `"key": 1  # note` stays an error,
  and a `#` inside a string is text (a JSON string cannot span lines, so a comment line is never inside one).
- A key given twice in one object is refused (JSON would keep the last one silently), with its lines.
- At most MAX_DEPTH levels of nesting; integers of at most MAX_DIGITS digits (the key named by config.py).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

MAX_DEPTH = 64
MAX_DIGITS = 19  # a 64-bit integer; longer ones are named with their key (config.py), not parsed
COMMENT = re.compile(r"^[ \t]*(#|//)")


class ConfigFileError(ValueError):
    """A config file that cannot be read as a JSON object; the message names the file and the place."""


class LongInteger(str):
    """An integer literal of more than MAX_DIGITS digits, kept as its text for the key check to name."""


class _Duplicate(Exception):
    def __init__(self, key: str):
        self.key = key


def strip_comments(text: str) -> str:
    """`text` with every full-line `#` or `//` comment blanked (line breaks kept)."""
    return "".join("\n" if COMMENT.match(line) else line for line in text.splitlines(keepends=True))


def _object(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _integer(text: str):
    return LongInteger(text) if len(text.lstrip("-")) > MAX_DIGITS else int(text)


def _depth(data) -> int:
    deepest, stack = 0, [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            deepest = max(deepest, depth)
            if depth <= MAX_DEPTH:
                stack.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return deepest


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigFileError(f"config file {path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at line {line} column "
                              f"{column}); save it as UTF-8") from None


def parse_config_text(text: str, path: Path | str = "<config>") -> dict:
    """The JSON object of a config's text, comments allowed (see the module's doc)."""
    text = strip_comments(text)
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_int=_integer)
    except _Duplicate as e:
        lines = sorted({text.count("\n", 0, m.start()) + 1
                        for m in re.finditer(re.escape(json.dumps(e.key)) + r"\s*:", text)})
        where = f" (line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))})" if lines else ""
        raise ConfigFileError(f"config file {path}: key {e.key!r} is given twice in one object{where}; JSON would keep "
                              "the last one silently: keep one") from None
    except json.JSONDecodeError as e:
        raise ConfigFileError(f"config file {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ConfigFileError(f"config file {path}: nested too deeply; expected at most {MAX_DEPTH} levels") from None
    if not isinstance(data, dict):
        raise ConfigFileError(f"config file {path}: expected a JSON object at the top level")
    if _depth(data) > MAX_DEPTH:
        raise ConfigFileError(f"config file {path}: nested more than {MAX_DEPTH} levels deep; expected at most "
                              f"{MAX_DEPTH}")
    return data


def read_config_file(path: Path) -> dict:
    """The JSON object in the config file at `path`; ConfigFileError naming the file and what is wrong."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} not found") from None
    except IsADirectoryError:
        raise ConfigFileError(f"config file {path} is a folder; expected a JSON file") from None
    except OSError as e:
        raise ConfigFileError(f"config file {path} cannot be read: {e.strerror}") from None
    return parse_config_text(_decode(path, raw), path)
