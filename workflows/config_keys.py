"""Keys as the user wrote them, checked against a dargs schema before and after its normalization (config.py
raises what these functions return): a legacy name and its new one both given, integers too long to be
one, booleans where numbers go (Python's `True` is an int, so dargs takes it for one), and the names error
messages use (the one the user wrote: `f_trust_lo`, not `model_devi_f_trust_lo`).
"""

from __future__ import annotations

import json
import re

from dargs import Argument

from .config_file import MAX_DIGITS, LongInteger


def aliases_written(raw: dict, arg: Argument) -> dict[str, str]:
    """{name: the legacy alias the user wrote instead} for the top-level keys of `raw` given by an alias."""
    return {name: alias for name, sub in arg.sub_fields.items() for alias in sub.alias if alias in raw and name not in raw}


def raw_key_problem(raw: dict, arg: Argument) -> str | None:
    """What is wrong with `raw` before normalization: a key given under two names, an integer too long."""
    for name, sub in arg.sub_fields.items():
        given = [k for k in raw if k in (name, *sub.alias)]  # in the file's order
        if len(given) > 1:
            return (f"{' and '.join(given)}: the same key under {len(given)} names (a legacy one and its new "
                    f"one); keep one")
    stack = [(raw, "")]
    while stack:
        node, where = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            path = f"{where}[{k}]" if isinstance(node, list) else (f"{where}.{k}" if where else str(k))
            if isinstance(v, LongInteger):
                return (f"{path}: an integer of {len(v.lstrip('-'))} digits; expected at most {MAX_DIGITS} digits "
                        "(64 bits)")
            stack.append((v, path))
    return None


def as_written(message: str, aliases: dict[str, str]) -> str:
    """`message` with each key name replaced by the alias the user wrote for it."""
    for name, alias in aliases.items():
        message = re.sub(rf"(?<![\w.]){re.escape(name)}(?!\w)", alias, message)
    return message


def _type_names(types) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types if not (t is int and float in types)))


def bool_mixup(arg: Argument, value, where: str) -> str | None:
    """The first place in `value` (checked against `arg`, variants followed) where a boolean stands for a
    number or a string, or None."""
    types = set(arg.dtype)
    if isinstance(value, bool):
        if bool in types:
            return None
        return f"{where}: expected {_type_names(types)}, got {json.dumps(value)} (a boolean)"
    if isinstance(value, list) and arg.repeat:
        for i, item in enumerate(value):
            found = bool_mixup(Argument(arg.name, dict, arg.sub_fields.values(), arg.sub_variants.values()), item,
                               f"{where}[{i}]")
            if found:
                return found
    if not isinstance(value, dict):
        return None
    for name, sub in arg.sub_fields.items():
        for key in (name, *sub.alias):
            if key in value:
                found = bool_mixup(sub, value[key], f"{where}.{key}" if where else key)
                if found:
                    return found
    for flag, variant in arg.sub_variants.items():
        tag = value.get(flag, variant.default_tag)
        choice = variant.choice_dict.get(variant.choice_alias.get(tag, tag)) if isinstance(tag, str) else None
        if choice is not None:
            found = bool_mixup(Argument(choice.name, dict, choice.sub_fields.values(), choice.sub_variants.values()),
                               value, where)
            if found:
                return found
    return None
