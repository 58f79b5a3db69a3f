"""The base of each OP's parameter object (a frozen dataclass that crosses the workflow as a plain dict, an
Argo parameter, and is checked back into the dataclass at the start of the OP's `execute`), and the rule
for errors: plain functions raise ValueError for what no retry can fix; `fatal_errors` makes that dflow's
FatalError in an OP (exit code 2, never retried), and it prints the OP's wall and CPU time into its log
(op_time)."""

from __future__ import annotations

import functools
from dataclasses import MISSING, asdict, fields


class OPParams:
    """Mixin for frozen dataclasses: `from_dict` rejects unknown and missing keys (ValueError: retrying cannot
    fix a renamed key), `as_dict` is what build.py hands to the step."""

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        unknown, missing = sorted(set(data) - known), sorted(required - set(data))
        if unknown or missing:
            raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}, missing key(s) {missing}; "
                             f"expected {sorted(known)}")
        return cls(**data)

    def as_dict(self) -> dict:
        return asdict(self)


def fatal_errors(execute):
    """Decorate an OP's `execute`: a ValueError (bad input or parameters, a deterministic stop) leaves the
    OP as dflow's FatalError with the same message; its time is printed as it ends (op_time.op_timer)."""

    @functools.wraps(execute)
    def wrapper(self, ip):
        from dflow.python import FatalError

        from .op_time import op_timer

        with op_timer():
            try:
                return execute(self, ip)
            except ValueError as e:
                raise FatalError(str(e)) from e

    return wrapper
