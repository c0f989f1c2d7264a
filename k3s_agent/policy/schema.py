"""A small, strict schema language for policy tables.

Each control declares the keys it accepts as Fields; the loader walks every
policy file against them, so an unknown key, a wrong type or an impossible
value is refused with the file, the key path and the reason.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any, Callable, Optional

Checker = Callable[[Any], Optional[str]]  # returns the reason a value is wrong, or None


class PolicyError(Exception):
    """A policy was refused. Carries every problem found, each naming file and key."""

    def __init__(self, problems: Iterable[str]):
        self.problems = [printable(p) for p in problems]
        super().__init__("\n".join(self.problems))


def printable(text: str) -> str:
    """text with control characters, newlines and undecodable bytes escaped.

    Problems name file and key paths an attacker may have chosen: a newline
    must not start a fake journal line, a lone surrogate (a non-UTF-8 file
    name) must not make the logger raise.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def brief(value: Any) -> str:
    """repr() cut short: an error about a 1 MiB string should not be 1 MiB long."""
    return _BRIEF.repr(value)


_BRIEF = reprlib.Repr()
_BRIEF.maxstring = _BRIEF.maxother = 80
_BRIEF.maxlevel = 3


@dataclasses.dataclass(frozen=True)
class Field:
    """One policy key: the single place for its type, bounds, default and meaning.

    The loader validates with it, the code reads the default from it, and the
    reference tables of docs/policy.md are generated from it (schema_doc.py).
    default: the value in force when no layer sets the key (None: none, or one
      that depends on the node; say which in doc).
    min/max: inclusive bounds of a number.
    check: any further rule; a checker made here (one_of, matches, list_of)
      also says in words what it accepts, for the docs.
    """

    kind: Any  # a type or tuple of types accepted (bool is never accepted as int)
    check: Optional[Checker] = None
    required: bool = False
    doc: str = ""
    default: Any = None
    min: Optional[float] = None
    max: Optional[float] = None

    def problem(self, value: Any) -> Optional[str]:
        """Why value (of the right type, finite) is wrong for this key, or None."""
        reason = self._out_of_bounds(value)
        if reason is None and self.check is not None:
            reason = self.check(value)
        return reason

    def _out_of_bounds(self, value: Any) -> Optional[str]:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        low, high = self.min, self.max
        if low is not None and high is not None:
            return between(low, high)(value)
        if low is not None:
            return at_least(low)(value)
        if high is not None and value > high:
            return f"must be <= {high:g}, got {value!r}"
        return None

    def accepts(self) -> str:
        """What the key accepts, in words (type, bounds, the checker's own words)."""
        text = type_name(self.kind)
        if self.min is not None and self.max is not None:
            text += f" {self.min:g}..{self.max:g}"
        elif self.min is not None:
            text += f" >= {self.min:g}"
        elif self.max is not None:
            text += f" <= {self.max:g}"
        said = getattr(self.check, "accepts", "")
        if not said:
            return text
        return f"{text} {said}" if said.startswith("of ") else f"{text}: {said}"


def setting(table: Mapping[str, Any], fields: Mapping[str, Field], key: str) -> Any:
    """table[key], or the default its Field declares: the one place a default lives.

    KeyError for a key fields do not declare (a typo in code, not in a policy).
    """
    return table.get(key, fields[key].default)


def key_path(*parts: str) -> str:
    """Render a TOML key path, quoting parts that are not bare keys."""
    return ".".join(p if _BARE.fullmatch(p) else '"' + p.replace('"', '\\"') + '"' for p in parts)


_BARE = re.compile(r"[A-Za-z0-9_-]+(?:\[[0-9]+\])?")


def type_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "true or false",
        list: "an array",
        dict: "a table",
        datetime.date: "a date (YYYY-MM-DD)",
    }
    return " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)


def plural_name(kind: Any) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "strings", int: "integers", float: "numbers", bool: "booleans", dict: "tables"}
    return " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)


def type_ok(value: Any, kind: Any) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, datetime.datetime):
        return datetime.datetime in kinds
    if isinstance(value, int) and float in kinds:
        return True
    return isinstance(value, kinds)


def check_table(
    table: Mapping[str, Any], fields: Mapping[str, Field], where: str, path: tuple[str, ...]
) -> list[str]:
    """Problems with one table: unknown keys, wrong types, failed checks."""
    problems = []
    for key, value in table.items():
        field = fields.get(key)
        label = f"{where}: {key_path(*path, key)}"
        if field is None:
            known = ", ".join(sorted(fields)) or "none"
            problems.append(f"{label}: unknown key (known keys: {known})")
            continue
        if not type_ok(value, field.kind):
            problems.append(
                f"{label}: expected {type_name(field.kind)}, got {type(value).__name__} {brief(value)}"
            )
            continue
        if isinstance(value, float) and not math.isfinite(value):
            # TOML has nan and inf; "nan < 1" is False, so a range check alone lets
            # them through (interval = nan would stop the timer, inf timeouts fail every control).
            problems.append(f"{label}: must be a finite number, got {brief(value)}")
            continue
        reason = field.problem(value)
        if reason:
            problems.append(f"{label}: {reason}")
    return problems


def missing_required(
    table: Mapping[str, Any], fields: Mapping[str, Field], where: str, path: tuple[str, ...]
) -> list[str]:
    return [
        f"{where}: {key_path(*path, key)}: required key is missing"
        for key, field in fields.items()
        if field.required and key not in table
    ]


# -- reusable checkers ---------------------------------------------------------


def described(checker: Checker, accepts: str) -> Checker:
    """checker, saying in words what it accepts (read by Field.accepts for the docs)."""
    checker.accepts = accepts  # type: ignore[attr-defined]
    return checker


def one_of(*allowed: Any) -> Checker:
    def check(value: Any) -> Optional[str]:
        if value not in allowed:
            return f"must be one of {', '.join(repr(a) for a in allowed)}, got {brief(value)}"
        return None

    return described(check, ", ".join(f"`{a}`" if isinstance(a, str) else repr(a) for a in allowed))


def at_least(minimum: float, exclusive: bool = False) -> Checker:
    def check(value: Any) -> Optional[str]:
        if value < minimum or (exclusive and value == minimum):
            op = ">" if exclusive else ">="
            return f"must be {op} {minimum:g}, got {value!r}"
        return None

    return check


def between(low: float, high: float) -> Checker:
    def check(value: Any) -> Optional[str]:
        if not low <= value <= high:
            return f"must be between {low:g} and {high:g}, got {value!r}"
        return None

    return check


def non_empty(value: Any) -> Optional[str]:
    return "must not be empty" if not str(value).strip() else None


described(non_empty, "not empty")


def list_of(kind: Any, check: Optional[Checker] = None) -> Checker:
    """Each element of kind and passing check."""

    def check_list(values: Any) -> Optional[str]:
        for index, value in enumerate(values):
            if not type_ok(value, kind):
                return f"[{index}]: expected {type_name(kind)}, got {brief(value)}"
            reason = check(value) if check else None
            if reason:
                return f"[{index}]: {reason}"
        return None

    said = getattr(check, "accepts", "")
    return described(check_list, f"of {plural_name(kind)}" + (f" ({said})" if said else ""))


def matches(pattern: str, what: str) -> Checker:
    compiled = re.compile(pattern)

    def check(value: Any) -> Optional[str]:
        if not compiled.fullmatch(str(value)):
            return f"{brief(value)} is not {what}"
        return None

    return described(check, what)
