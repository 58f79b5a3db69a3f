"""The base of each OP's parameter object: a frozen dataclass that crosses the workflow as a plain dict
(an Argo parameter) and is checked back into the dataclass at the start of the OP's `execute`."""

from __future__ import annotations

from dataclasses import MISSING, asdict, fields

from dflow.python import FatalError


class OPParams:
    """Mixin for frozen dataclasses: `from_dict` rejects unknown and missing keys (a FatalError: retrying
    cannot fix a renamed key), `as_dict` is what build.py hands to the step."""

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = sorted(set(data) - known), sorted(required - set(data))
        if unknown or missing:
            raise FatalError(f"{cls.__name__}: unknown key(s) {unknown}, missing key(s) {missing}; "
                             f"expected {sorted(known)}")
        return cls(**data)

    def as_dict(self) -> dict:
        return asdict(self)
