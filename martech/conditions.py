"""The one condition language: "does this lead match?" (docs/conditions.md).

Scoring rules, segments, routing rules and nurture criteria all store a
condition as text that ops staff type in the admin, for example::

    score >= 80 and country in ("US", "CA") and not email ends_with "@gmail.com"

The text is tokenized and parsed by a small recursive-descent parser (never
``eval``), checked against the Lead/Account fields, and then either evaluated
in memory for one lead (``Condition.evaluate``) or compiled to a Django ``Q``
for set queries (``Condition.to_q`` / ``matching_leads``). Both give the same
answer for every lead; tests/martech/test_conditions_property.py checks that
with hypothesis on SQLite and PostgreSQL.

Grammar (keywords are case-insensitive)::

    condition  := or_expr
    or_expr    := and_expr ("or" and_expr)*
    and_expr   := not_expr ("and" not_expr)*
    not_expr   := "not" not_expr | "(" or_expr ")" | comparison
    comparison := field cmp_op literal
                | field ["not"] "in" "(" literal ("," literal)* ")"
                | field ["not"] ("contains" | "starts_with" | "ends_with") text
                | field "is" ["not"] "empty"
    cmp_op     := "=" | "!=" | "<" | "<=" | ">" | ">="
    literal    := text | number | "true" | "false" | date | now
    text       := '"' chars '"' | "'" chars "'"      (backslash escapes the next char)
    number     := ["-"] digits ["." digits]
    date       := YYYY-MM-DD                          (midnight UTC for date-time fields)
    now        := "now" [("+" | "-") digits unit]     unit: minute(s) hour(s) day(s) week(s)
    field      := lead_field | "score" | "email_domain"
                | "account." account_field | "properties." name

Fields and what they accept:

- text fields (``email``, ``country``, ``job_title``, ``email_domain``,
  ``lifecycle_stage`` = the stage key, ``owner`` = the owner's username,
  ``account.industry`` ...): ``=``, ``!=``, ``in``, ``contains``,
  ``starts_with``, ``ends_with`` with non-empty text. All text comparisons are
  case-insensitive. ``<``/``>`` on text are refused (Python and database
  collations disagree on order).
- integer fields (``fit_score``, ``total_score`` alias ``score``,
  ``account.employee_count`` ...): comparisons and ``in`` with integers.
- decimal fields (``account.annual_revenue``): numbers with at most the
  field's decimal places.
- date-time fields (``created_at``, ``latest_touch_at`` ...): ``<``, ``<=``,
  ``>``, ``>=`` with a date or ``now - 30 days``.
- ``account``: only ``is empty`` / ``is not empty``.
- ``properties.<name>``: a custom property (JSON). The literal decides the
  comparison: a text literal matches only text values, a number only numbers
  (compared as floating point), ``true``/``false`` only booleans.

Empty values: NULL, ``""``, a missing account and a missing (or JSON null)
property are *empty*. ``is empty`` matches them; every other positive
comparison is false for an empty value, and every negated form (``!=``,
``not in``, ``not contains``, ``not (...)``) is exactly the negation of its
positive form, so ``country != "US"`` matches leads with no country.

Case folding: the database folds case (SQLite: ASCII letters only, PostgreSQL:
Unicode simple case mapping); ``evaluate`` folds the same way as the database
in use, so the two never disagree.
"""
from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connections, models
from django.db.models import F, Func, Q, Value
from django.db.models.functions import Coalesce, StrIndex, Substr, Upper
from django.db.models.lookups import (
    Exact,
    GreaterThan,
    GreaterThanOrEqual,
    IContains,
    IEndsWith,
    IExact,
    IStartsWith,
    LessThan,
    LessThanOrEqual,
)
from django.utils import timezone

__all__ = [
    "Condition",
    "ConditionError",
    "ConditionField",
    "field_check",
    "field_value",
    "matching_leads",
    "parse",
    "validate_condition",
]

MAX_LENGTH = 10_000
MAX_DEPTH = 40
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1
# A literal is refused before Python converts it: int() of more than 4,300
# digits raises ValueError (the interpreter's conversion limit), which was a
# 500 at save instead of a ConditionError. 64-bit integers have 19 digits.
_MAX_INT_DIGITS = 19
_MAX_NUMBER_CHARS = 40
# "now +/- N unit" must stay a datetime that Python (years 1..9999) and both
# databases hold for any real "now": 100 years either way. Larger intervals
# (``now - 1000000 days``) parsed and then raised OverflowError in every route.
MAX_INTERVAL = {"minutes": 100 * 366 * 24 * 60, "hours": 100 * 366 * 24, "days": 100 * 366, "weeks": 100 * 366 // 7}
# The range of each integer column type (signed: a comparison of a positive
# column with a negative number is still meaningful). A literal outside the
# column's range is refused naming the column: SQL may refuse to bind it.
_INT_RANGES = {
    "SmallIntegerField": (-(2**15), 2**15 - 1), "PositiveSmallIntegerField": (-(2**15), 2**15 - 1),
    "IntegerField": (-(2**31), 2**31 - 1), "PositiveIntegerField": (-(2**31), 2**31 - 1),
    "AutoField": (-(2**31), 2**31 - 1), "SmallAutoField": (-(2**15), 2**15 - 1),
}


class ConditionError(ValidationError):
    """Invalid condition text. ``position`` is the 1-based column, ``reason``
    says what is wrong; the message reads ``column N: reason``."""

    def __init__(self, position: int, reason: str):
        self.position = position
        self.reason = reason
        super().__init__(f"column {position}: {reason}", code="invalid_condition")


# --- Tokenizer --------------------------------------------------------------

_KEYWORDS = {
    "and", "or", "not", "in", "contains", "starts_with", "ends_with", "is", "empty", "true", "false", "now",
}
_UNITS = {
    "minute": "minutes", "minutes": "minutes", "hour": "hours", "hours": "hours",
    "day": "days", "days": "days", "week": "weeks", "weeks": "weeks",
}
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}(?![\w.])")
_NUMBER_RE = re.compile(r"\d+(\.\d+)?")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_OPS = ("<=", ">=", "!=", "=", "<", ">", "(", ")", ",", "+", "-")


@dataclass(frozen=True)
class _Token:
    kind: str  # ident, kw, str, num, date, op, end
    value: Any
    pos: int  # 1-based column
    raw: str = ""


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        pos = i + 1
        if ch in "\"'":
            quote, j, out = ch, i + 1, []
            while j < n and text[j] != quote:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                out.append(text[j])
                j += 1
            if j >= n:
                raise ConditionError(pos, "unterminated text (missing closing quote)")
            tokens.append(_Token("str", "".join(out), pos, text[i:j + 1]))
            i = j + 1
            continue
        if ch.isascii() and ch.isdigit():
            m = _DATE_RE.match(text, i)
            if m:
                raw = m.group(0)
                try:
                    value = dt.date.fromisoformat(raw)
                except ValueError:
                    raise ConditionError(pos, f"{raw} is not a valid date") from None
                tokens.append(_Token("date", value, pos, raw))
                i = m.end()
                continue
            m = _NUMBER_RE.match(text, i)
            raw = m.group(0)
            whole = raw.partition(".")[0].lstrip("0")
            if len(whole) > _MAX_INT_DIGITS:
                raise ConditionError(pos, f"number out of range: {len(whole)} digits before the point, at most "
                                          f"{_MAX_INT_DIGITS} (integers are 64-bit)")
            if len(raw) > _MAX_NUMBER_CHARS:
                raise ConditionError(pos, f"number has more than {_MAX_NUMBER_CHARS} characters")
            tokens.append(_Token("num", Decimal(raw) if "." in raw else int(raw), pos, raw))
            i = m.end()
            continue
        m = _IDENT_RE.match(text, i)
        if m:
            raw = m.group(0)
            if raw.lower() in _KEYWORDS:
                tokens.append(_Token("kw", raw.lower(), pos, raw))
            else:
                tokens.append(_Token("ident", raw, pos, raw))
            i = m.end()
            continue
        for op in _OPS:
            if text.startswith(op, i):
                tokens.append(_Token("op", op, pos, op))
                i += len(op)
                break
        else:
            raise ConditionError(pos, f"unexpected character {ch!r}")
    tokens.append(_Token("end", None, n + 1, "end of text"))
    return tokens


# --- Fields -----------------------------------------------------------------

TEXT, INT, DEC, BOOL, DATETIME, DATE, RELATION, PROP = "text", "int", "dec", "bool", "datetime", "date", "relation", "prop"


@dataclass(frozen=True)
class FieldSpec:
    path: str  # canonical path, e.g. "total_score", "account.country"
    kind: str
    orm: str = ""  # lookup path, e.g. "account__owner__username"
    nullable: bool = False  # the ORM value can be NULL
    via_account: bool = False
    attr: str = ""  # attribute on the lead (or its account)
    related_attr: str = ""  # for FKs shown by a related field (owner.username)
    decimal_places: int | None = None
    max_digits: int | None = None
    int_range: tuple[int, int] | None = None  # the column's range (integer fields)
    # Text as the database stores it (a PhoneNumber becomes its stored string).
    prep: Any = field(default=None, compare=False, repr=False)


def _field_kind(f: models.Field) -> str | None:
    if isinstance(f, models.BooleanField):
        return BOOL
    if isinstance(f, models.DateTimeField):
        return DATETIME
    if isinstance(f, models.DateField):
        return DATE
    if isinstance(f, models.DecimalField):
        return DEC
    if isinstance(f, (models.IntegerField, models.AutoField, models.BigAutoField)):
        return INT
    if isinstance(f, (models.CharField, models.TextField)):
        return TEXT
    if f.get_internal_type() == "CharField":  # e.g. PhoneNumberField
        return TEXT
    return None


def _model_specs(model, *, prefix: str, orm_prefix: str, via_account: bool) -> dict[str, FieldSpec]:
    specs: dict[str, FieldSpec] = {}
    for f in model._meta.concrete_fields:
        path, orm = prefix + f.name, orm_prefix + f.name
        if f.is_relation:
            if f.name in ("owner", "actor"):  # users are named by username
                specs[path] = FieldSpec(path, TEXT, orm + "__username", True, via_account, f.name, "username")
            elif f.name == "lifecycle_stage":
                specs[path] = FieldSpec(path, TEXT, orm + "__key", True, via_account, f.name, "key")
            continue
        kind = _field_kind(f)
        if kind is None:
            continue
        specs[path] = FieldSpec(
            path, kind, orm, f.null or via_account, via_account, f.attname,
            decimal_places=getattr(f, "decimal_places", None), max_digits=getattr(f, "max_digits", None),
            int_range=_INT_RANGES.get(f.get_internal_type(), (_INT_MIN, _INT_MAX)) if kind == INT else None,
            prep=f.get_prep_value if kind == TEXT else None,
        )
    return specs


@cache
def _specs() -> dict[str, FieldSpec]:
    from martech.models import Account, Lead

    specs = _model_specs(Lead, prefix="", orm_prefix="", via_account=False)
    specs.pop("properties", None)
    specs["account"] = FieldSpec("account", RELATION, "account", True, False, "account_id")
    specs.update(_model_specs(Account, prefix="account.", orm_prefix="account__", via_account=True))
    specs["email_domain"] = FieldSpec("email_domain", TEXT, "", False, False, "email_domain")
    return specs


_ALIASES = {"score": "total_score"}


def _resolve(path: str, pos: int) -> FieldSpec:
    path = _ALIASES.get(path, path)
    if path.startswith("properties."):
        name = path[len("properties."):]
        if "." in name:
            raise ConditionError(pos, f"nested custom property {path!r} is not supported; use properties.<name>")
        return FieldSpec(path, PROP, attr=name)
    spec = _specs().get(path)
    if spec is None:
        if path == "properties":
            raise ConditionError(pos, "name a custom property: properties.<name>")
        if path.startswith("account.") or path.startswith("account__"):
            raise ConditionError(pos, f"unknown account field {path!r}")
        raise ConditionError(pos, f"unknown field {path!r}")
    return spec


def field_check(path: str) -> None:
    """Raise ConditionError when ``path`` is not a field of the language
    (email merge fields name the same fields conditions do)."""
    _resolve(path, 1)


def field_value(path: str, lead) -> Any:
    """The lead's value for a field path of the language, None when empty.
    Only the fields ``field_check`` accepts are read: no other attribute of
    the lead, its account or their relations is reachable through a path."""
    return _value(_resolve(path, 1), lead)


def load_fields(paths: Iterable[str]) -> frozenset[str]:
    """The names ``QuerySet.only()`` needs so that ``Condition.evaluate``
    reads these field paths without loading a deferred field (relations also
    need their ``select_related``): a narrow read of the lead for in-memory
    evaluation."""
    out: set[str] = set()
    for path in paths:
        spec = _resolve(path, 1)
        if spec.kind == PROP:
            out.add("properties")
        elif spec.path == "email_domain":
            out.add("email")
        elif spec.kind == RELATION:
            out.add("account")
        else:
            out.add(spec.orm)
            if spec.via_account:
                out.add("account")
    return frozenset(out)


# --- AST --------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    type: str  # text, int, dec, bool, date, now
    value: Any  # str, int, Decimal, bool, date, or (amount, unit) for now
    pos: int = 1

    def resolve(self, now: dt.datetime) -> Any:
        if self.type == "now":
            amount, unit = self.value
            return now + dt.timedelta(**{unit: amount})
        return self.value

    def to_json(self) -> dict:
        if self.type == "dec":
            return {"t": "dec", "v": str(self.value)}
        if self.type == "date":
            return {"t": "date", "v": self.value.isoformat()}
        if self.type == "now":
            return {"t": "now", "v": self.value[0], "unit": self.value[1]}
        return {"t": self.type, "v": self.value}


@dataclass(frozen=True)
class Cmp:
    field: FieldSpec
    op: str  # = != < <= > >= in "not in" contains "not contains" ... "is empty" "is not empty"
    values: tuple[Lit, ...] = ()


@dataclass(frozen=True)
class And:
    args: tuple


@dataclass(frozen=True)
class Or:
    args: tuple


@dataclass(frozen=True)
class Not:
    arg: Any


_NEGATED = {"!=": "=", "not in": "in", "not contains": "contains", "not starts_with": "starts_with",
            "not ends_with": "ends_with", "is not empty": "is empty"}
_ORDER_OPS = ("<", "<=", ">", ">=")
_TEXT_OPS = ("contains", "starts_with", "ends_with")


def _check(field: FieldSpec, op: str, values: tuple[Lit, ...], op_pos: int) -> None:
    """Refuse an operator or literal the field cannot take (raises ConditionError)."""
    base = _NEGATED.get(op, op)
    kind = field.kind
    if base == "is empty":
        return
    if kind == RELATION:
        raise ConditionError(op_pos, f"{field.path} only supports 'is empty' / 'is not empty'; "
                                     f"compare one of its fields, e.g. {field.path}.name")
    if kind == PROP:
        types = {("num" if v.type in ("int", "dec") else v.type) for v in values}
        for v in values:
            if v.type not in ("text", "int", "dec", "bool"):
                raise ConditionError(v.pos, f"{field.path} compares with text, numbers or true/false, not {v.type}")
        if len(types) > 1:
            raise ConditionError(values[1].pos, f"all values in the list for {field.path} must be of one type")
        t = types.pop()
        ok = {"text": ("=", "in") + _TEXT_OPS, "num": ("=", "in") + _ORDER_OPS, "bool": ("=",)}[t]
        if base not in ok:
            raise ConditionError(op_pos, f"operator {op!r} does not apply to {'numbers' if t == 'num' else t} "
                                         f"for {field.path}")
        _check_text_literals(values)
        return
    allowed = {
        TEXT: ("=", "in") + _TEXT_OPS,
        INT: ("=", "in") + _ORDER_OPS,
        DEC: ("=", "in") + _ORDER_OPS,
        BOOL: ("=",),
        DATETIME: _ORDER_OPS,
        DATE: ("=", "in") + _ORDER_OPS,
    }[kind]
    if base not in allowed:
        why = " (text has no order; use =, in, contains, starts_with or ends_with)" if kind == TEXT else ""
        raise ConditionError(op_pos, f"operator {op!r} does not apply to {field.path} ({kind}){why}")
    expected = {TEXT: ("text",), INT: ("int",), DEC: ("int", "dec"), BOOL: ("bool",),
                DATETIME: ("date", "now"), DATE: ("date", "now")}[kind]
    names = {TEXT: "text", INT: "an integer", DEC: "a number", BOOL: "true or false",
             DATETIME: "a date or now +/- an interval", DATE: "a date or now +/- an interval"}[kind]
    for v in values:
        if v.type not in expected:
            raise ConditionError(v.pos, f"{field.path} needs {names}, not {_describe(v)}")
        if kind == DEC and v.type == "dec":
            _, digits, exponent = v.value.as_tuple()
            places = max(0, -exponent)
            if places > (field.decimal_places or 0):
                raise ConditionError(v.pos, f"{field.path} takes at most {field.decimal_places} decimal places")
            if len(digits) - places > (field.max_digits or 0) - (field.decimal_places or 0):
                raise ConditionError(v.pos, f"{v.value} is too large for {field.path}")
        if kind == INT and field.int_range is not None and not field.int_range[0] <= v.value <= field.int_range[1]:
            lo, hi = field.int_range
            raise ConditionError(v.pos, f"{v.value} is out of range for {field.path} (an integer column holds "
                                        f"{lo}..{hi})")
        if kind == DEC and v.type == "int" and len(str(abs(v.value))) > (field.max_digits or 0) - (
            field.decimal_places or 0
        ):
            raise ConditionError(v.pos, f"{v.value} is too large for {field.path}")
    _check_text_literals(values)


def _check_text_literals(values: tuple[Lit, ...]) -> None:
    for v in values:
        if v.type == "text" and v.value == "":
            raise ConditionError(v.pos, "empty text never matches; use 'is empty' / 'is not empty'")
        if v.type == "text" and "\x00" in v.value:
            raise ConditionError(v.pos, "text may not contain a NUL character")


def _describe(v: Lit) -> str:
    return {"text": "text", "int": "an integer", "dec": "a decimal number", "bool": "true/false",
            "date": "a date", "now": "now"}[v.type]


# --- Parser -----------------------------------------------------------------


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.i = 0
        self.depth = 0

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        t = self.tokens[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def is_kw(self, *words: str) -> bool:
        return self.tok.kind == "kw" and self.tok.value in words

    def is_op(self, *ops: str) -> bool:
        return self.tok.kind == "op" and self.tok.value in ops

    def fail(self, reason: str, tok: _Token | None = None):
        raise ConditionError((tok or self.tok).pos, reason)

    def parse(self):
        node = self.or_expr()
        if self.tok.kind != "end":
            if self.is_op(")"):
                self.fail("unbalanced ')' (no matching '(')")
            self.fail(f"unexpected {self.tok.raw!r}; expected 'and', 'or' or the end")
        return node

    def nest(self):
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"nested more than {MAX_DEPTH} levels deep")

    def or_expr(self):
        args = [self.and_expr()]
        while self.is_kw("or"):
            self.take()
            args.append(self.and_expr())
        return args[0] if len(args) == 1 else Or(tuple(args))

    def and_expr(self):
        args = [self.not_expr()]
        while self.is_kw("and"):
            self.take()
            args.append(self.not_expr())
        return args[0] if len(args) == 1 else And(tuple(args))

    def not_expr(self):
        if self.is_kw("not"):
            self.take()
            self.nest()
            node = Not(self.not_expr())
            self.depth -= 1
            return node
        if self.is_op("("):
            opening = self.take()
            self.nest()
            node = self.or_expr()
            self.depth -= 1
            if not self.is_op(")"):
                if self.tok.kind == "end":
                    self.fail(f"missing ')' for the '(' at column {opening.pos}")
                self.fail(f"unexpected {self.tok.raw!r}; expected ')' to close the '(' at column {opening.pos}")
            self.take()
            return node
        return self.comparison()

    def comparison(self):
        t = self.tok
        if t.kind != "ident":
            if t.kind == "end":
                self.fail("expected a condition, found the end of the text")
            self.fail(f"expected a field name, found {t.raw!r}")
        self.take()
        spec = _resolve(t.value, t.pos)
        op_tok = self.tok
        if self.is_op("=", "!=", "<", "<=", ">", ">="):
            op = self.take().value
            values = (self.literal(),)
        elif self.is_kw("is"):
            self.take()
            negated = False
            if self.is_kw("not"):
                self.take()
                negated = True
            if not self.is_kw("empty"):
                self.fail("expected 'empty' after 'is'" + (" not" if negated else ""))
            self.take()
            op, values = ("is not empty" if negated else "is empty"), ()
        else:
            negated = False
            if self.is_kw("not"):
                self.take()
                negated = True
            if self.is_kw("in"):
                self.take()
                values = self.literal_list()
                op = "in"
            elif self.is_kw(*_TEXT_OPS):
                op = self.take().value
                values = (self.literal(),)
            else:
                self.fail(f"expected an operator after {t.raw!r} (=, !=, <, <=, >, >=, in, contains, "
                          f"starts_with, ends_with, is empty), found {self.tok.raw!r}")
            if negated:
                op = "not " + op
        _check(spec, op, values, op_tok.pos)
        return Cmp(spec, op, values)

    def literal_list(self) -> tuple[Lit, ...]:
        if not self.is_op("("):
            self.fail("expected '(' to open the list after 'in'")
        opening = self.take()
        values = [self.literal()]
        while self.is_op(","):
            self.take()
            values.append(self.literal())
        if not self.is_op(")"):
            if self.tok.kind == "end":
                self.fail(f"missing ')' for the list opened at column {opening.pos}")
            self.fail(f"expected ',' or ')' in the list, found {self.tok.raw!r}")
        self.take()
        return tuple(values)

    def literal(self) -> Lit:
        t = self.tok
        if t.kind == "str":
            self.take()
            return Lit("text", t.value, t.pos)
        if t.kind == "date":
            self.take()
            return Lit("date", t.value, t.pos)
        if t.kind == "kw" and t.value in ("true", "false"):
            self.take()
            return Lit("bool", t.value == "true", t.pos)
        if self.is_op("-") or t.kind == "num":
            sign = 1
            if self.is_op("-"):
                self.take()
                sign = -1
                if self.tok.kind != "num":
                    self.fail("expected a number after '-'")
            num = self.take()
            value = sign * num.value
            if isinstance(value, int):
                if not _INT_MIN <= value <= _INT_MAX:
                    self.fail("integer out of range (64-bit)", num)
                return Lit("int", value, t.pos)
            if len(num.raw) > 40:
                self.fail("number has too many digits", num)
            return Lit("dec", value, t.pos)
        if t.kind == "kw" and t.value == "now":
            self.take()
            if self.is_op("+", "-"):
                sign = 1 if self.take().value == "+" else -1
                amount = self.tok
                if amount.kind != "num" or not isinstance(amount.value, int):
                    self.fail("expected a whole number after 'now +' / 'now -'")
                self.take()
                unit = self.tok
                if unit.kind != "ident" or unit.value.lower() not in _UNITS:
                    self.fail("expected a unit: minutes, hours, days or weeks")
                self.take()
                name = _UNITS[unit.value.lower()]
                if amount.value > MAX_INTERVAL[name]:
                    self.fail(f"interval too large: at most {MAX_INTERVAL[name]} {name} (100 years), so that the "
                              "date stays one the database can hold", amount)
                return Lit("now", (sign * amount.value, name), t.pos)
            return Lit("now", (0, "days"), t.pos)
        if t.kind == "end":
            self.fail("expected a value, found the end of the text")
        self.fail(f"expected a value (text in quotes, number, true/false, date or now), found {t.raw!r}")


# --- In-memory evaluation -----------------------------------------------------

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(s: str) -> str:
    """Fold case exactly as the database's case-insensitive lookups do:
    SQLite's LIKE folds ASCII only; PostgreSQL's UPPER() maps one character to
    one character (so 'ß' stays 'ß', where Python's str.upper() gives 'SS')."""
    if connections["default"].vendor == "sqlite":
        return s.translate(_ASCII_LOWER)
    out = []
    for c in s:
        u = c.upper()
        out.append(u if len(u) == 1 else c)
    return "".join(out)


_MISSING = object()


def _value(spec: FieldSpec, lead) -> Any:
    """The lead's value for a field path; None when empty."""
    if spec.kind == PROP:
        props = lead.properties if isinstance(lead.properties, dict) else {}
        value = props.get(spec.attr, None)
        return None if value is None or value == "" else value
    obj = lead
    if spec.via_account:
        obj = lead.account if lead.account_id is not None else None
        if obj is None:
            return None
    if spec.kind == RELATION:
        return getattr(obj, spec.attr)
    if spec.related_attr:
        if getattr(obj, spec.attr + "_id") is None:
            return None
        value = getattr(getattr(obj, spec.attr), spec.related_attr)
    else:
        value = getattr(obj, spec.attr)
    if spec.kind == TEXT:
        if value is not None and spec.prep is not None:
            value = spec.prep(value)
        value = "" if value is None else str(value)
        return value or None
    return value


_PY_ORDER = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _as_float(v: int | float) -> float:
    """A JSON number as a double, as the database reads it; an integer too
    large for a double is infinite rather than an OverflowError."""
    try:
        return float(v)
    except OverflowError:
        return float("inf") if v > 0 else float("-inf")


def _as_datetime(v: Any) -> dt.datetime:
    if isinstance(v, dt.datetime):
        return v
    return dt.datetime.combine(v, dt.time.min, tzinfo=dt.UTC)


def _eval_cmp(node: Cmp, lead, now: dt.datetime) -> bool:
    base = _NEGATED.get(node.op, node.op)
    result = _eval_positive(node, base, lead, now)
    return (not result) if base != node.op else result


def _eval_positive(node: Cmp, op: str, lead, now: dt.datetime) -> bool:
    spec = node.field
    value = _value(spec, lead)
    if op == "is empty":
        return value is None
    if value is None:
        return False
    lits = [lit.resolve(now) for lit in node.values]
    kind = spec.kind
    if kind == PROP:
        t = node.values[0].type
        if t == "text":
            if not isinstance(value, str):
                return False
            kind = TEXT
        elif t == "bool":
            return isinstance(value, bool) and value == lits[0]
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return False
            value, lits = _as_float(value), [float(v) for v in lits]
            kind = INT
    if kind == TEXT:
        folded = _fold(value)
        needles = [_fold(v) for v in lits]
        if op in ("=", "in"):
            return folded in needles
        if op == "contains":
            return needles[0] in folded
        if op == "starts_with":
            return folded.startswith(needles[0])
        return folded.endswith(needles[0])
    if kind == DATETIME:
        lits = [_as_datetime(v) for v in lits]
    elif kind == DATE:
        lits = [v.date() if isinstance(v, dt.datetime) else v for v in lits]
    if op in ("=", "in"):
        return value in lits
    return _PY_ORDER[op](value, lits[0])


def _evaluate(node, lead, now: dt.datetime) -> bool:
    if isinstance(node, And):
        return all(_evaluate(a, lead, now) for a in node.args)
    if isinstance(node, Or):
        return any(_evaluate(a, lead, now) for a in node.args)
    if isinstance(node, Not):
        return not _evaluate(node.arg, lead, now)
    return _eval_cmp(node, lead, now)


# --- Compilation to Q -----------------------------------------------------------


class _PropKind(Func):
    """The JSON type of properties.<key> as one of missing, null, text,
    number, true, false, other; never NULL, so NOT(...) stays two-valued."""

    output_field = models.CharField()

    def __init__(self, key: str):
        super().__init__(F("properties"))
        self.key = key

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        t = f"JSON_TYPE({sql}, %s)"
        path = f'$."{self.key}"'
        return (
            f"(CASE WHEN {t} IS NULL THEN 'missing' WHEN {t} IN ('integer', 'real') THEN 'number' "
            f"WHEN {t} IN ('text', 'true', 'false', 'null') THEN {t} ELSE 'other' END)",
            (*params, path, *params, path, *params, path, *params, path),
        )

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        t = f"jsonb_typeof(({sql})::jsonb -> %s)"
        v = f"(({sql})::jsonb ->> %s)"
        return (
            f"(CASE WHEN {t} IS NULL THEN 'missing' WHEN {t} = 'string' THEN 'text' "
            f"WHEN {t} = 'number' THEN 'number' WHEN {t} = 'boolean' THEN {v} "
            f"WHEN {t} = 'null' THEN 'null' ELSE 'other' END)",
            (*params, self.key, *params, self.key, *params, self.key, *params, self.key, *params, self.key,
             *params, self.key),
        )


class _PropText(Func):
    """properties.<key> as text (only meaningful when its kind is text)."""

    output_field = models.TextField()

    def __init__(self, key: str):
        super().__init__(F("properties"))
        self.key = key

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"JSON_EXTRACT({sql}, %s)", (*params, f'$."{self.key}"')

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"(({sql})::jsonb ->> %s)", (*params, self.key)


class _PropNumber(Func):
    """properties.<key> as a double when it is a JSON number, else NULL."""

    output_field = models.FloatField()

    def __init__(self, key: str):
        super().__init__(F("properties"))
        self.key = key

    def as_sqlite(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        path = f'$."{self.key}"'
        return (
            f"(CASE WHEN JSON_TYPE({sql}, %s) IN ('integer', 'real') THEN JSON_EXTRACT({sql}, %s) END)",
            (*params, path, *params, path),
        )

    def as_postgresql(self, compiler, connection, **extra):
        sql, params = compiler.compile(self.source_expressions[0])
        return (
            f"(CASE WHEN jsonb_typeof(({sql})::jsonb -> %s) = 'number' "
            f"THEN (({sql})::jsonb ->> %s)::double precision END)",
            (*params, self.key, *params, self.key),
        )


def _email_domain_expr():
    email = Coalesce(F("email"), Value(""), output_field=models.CharField())
    return Substr(email, StrIndex(email, Value("@")) + Value(1), output_field=models.CharField())


_TEXT_LOOKUPS = {"=": IExact, "in": IExact, "contains": IContains, "starts_with": IStartsWith,
                 "ends_with": IEndsWith}
_TEXT_KW = {"=": "iexact", "in": "iexact", "contains": "icontains", "starts_with": "istartswith",
            "ends_with": "iendswith"}
_ORDER_LOOKUPS = {"<": LessThan, "<=": LessThanOrEqual, ">": GreaterThan, ">=": GreaterThanOrEqual}
_ORDER_KW = {"<": "lt", "<=": "lte", ">": "gt", ">=": "gte", "=": "exact", "in": "exact"}

_NEVER = Q(pk__in=[])

# col__upper__in=[...] for the text comparisons (_q_positive).
models.CharField.register_lookup(Upper)
models.TextField.register_lookup(Upper)


def _any(qs: list[Q]) -> Q:
    out = qs[0]
    for q in qs[1:]:
        out |= q
    return out


def _q_cmp(node: Cmp, now: dt.datetime) -> Q:
    base = _NEGATED.get(node.op, node.op)
    q = _q_positive(node, base, now)
    return ~q if base != node.op else q


def _q_positive(node: Cmp, op: str, now: dt.datetime) -> Q:
    """A Q that is TRUE or FALSE for every lead, never SQL NULL, so that
    negating it (``!=``, ``not in``, ``not (...)``) is exact."""
    spec = node.field
    lits = [lit.resolve(now) for lit in node.values]
    if spec.kind == PROP:
        kind = _PropKind(spec.attr)
        if op == "is empty":
            return (
                Q(Exact(kind, "missing"))
                | Q(Exact(_PropKind(spec.attr), "null"))
                | (Q(Exact(_PropKind(spec.attr), "text")) & Q(Exact(_PropText(spec.attr), "")))
            )
        t = node.values[0].type
        if t == "text":
            text = _PropText(spec.attr)
            match = _any([Q(_TEXT_LOOKUPS[op](text, v)) for v in lits])
            return Q(Exact(kind, "text")) & match
        if t == "bool":
            return Q(Exact(kind, "true" if lits[0] else "false"))
        number = _PropNumber(spec.attr)
        if op in ("=", "in"):
            match = _any([Q(Exact(number, float(v))) for v in lits])
        else:
            match = Q(_ORDER_LOOKUPS[op](number, float(lits[0])))
        return Q(Exact(kind, "number")) & match
    if spec.path == "email_domain":
        expr = _email_domain_expr()
        if op == "is empty":
            return Q(Exact(expr, ""))
        return _any([Q(_TEXT_LOOKUPS[op](expr, v)) for v in lits])
    if spec.kind == RELATION:
        return Q(**{f"{spec.orm}__isnull": True})
    if op == "is empty":
        q = Q(**{f"{spec.orm}__isnull": True}) if spec.nullable else _NEVER
        if spec.kind == TEXT:
            q |= Q(**{spec.orm: ""})
        return q
    if spec.kind == TEXT and op in ("=", "in"):
        # UPPER(col) IN (UPPER(%s), ...): the column is folded once per row
        # (iexact per value folds it once per value); PostgreSQL's planner has
        # statistics on UPPER(col) (scoring's migration 0003), and an
        # expression index on UPPER(col) would serve it. Same folding as
        # iexact on both databases (SQLite: ASCII only).
        match = Q(**{f"{spec.orm}__upper__in": [Upper(Value(v)) for v in lits]})
    elif spec.kind == TEXT:
        match = _any([Q(**{f"{spec.orm}__{_TEXT_KW[op]}": v}) for v in lits])
    else:
        if spec.kind == DATETIME:
            lits = [_as_datetime(v) for v in lits]
        elif spec.kind == DATE:
            lits = [v.date() if isinstance(v, dt.datetime) else v for v in lits]
        if op == "in":
            match = Q(**{f"{spec.orm}__in": lits})
        else:
            match = Q(**{f"{spec.orm}__{_ORDER_KW[op]}": lits[0]})
    if spec.nullable:
        # col < 5 is NULL for a NULL col; pin it to FALSE so NOT(...) is exact.
        match = Q(**{f"{spec.orm}__isnull": False}) & match
    return match


def _to_q(node, now: dt.datetime) -> Q:
    if isinstance(node, And):
        out = _to_q(node.args[0], now)
        for a in node.args[1:]:
            out &= _to_q(a, now)
        return out
    if isinstance(node, Or):
        return _any([_to_q(a, now) for a in node.args])
    if isinstance(node, Not):
        return ~_to_q(node.arg, now)
    return _q_cmp(node, now)


# --- JSON form ----------------------------------------------------------------


def _node_to_json(node) -> dict:
    if isinstance(node, And):
        return {"and": [_node_to_json(a) for a in node.args]}
    if isinstance(node, Or):
        return {"or": [_node_to_json(a) for a in node.args]}
    if isinstance(node, Not):
        return {"not": _node_to_json(node.arg)}
    return {"field": node.field.path, "op": node.op, "values": [v.to_json() for v in node.values]}


def _lit_from_json(data: Any) -> Lit:
    t, v = data["t"], data["v"]
    if t == "text" and isinstance(v, str):
        return Lit("text", v)
    if t == "int" and isinstance(v, int) and not isinstance(v, bool) and _INT_MIN <= v <= _INT_MAX:
        return Lit("int", v)
    if t == "dec" and isinstance(v, str):
        return Lit("dec", Decimal(v))
    if t == "bool" and isinstance(v, bool):
        return Lit("bool", v)
    if t == "date" and isinstance(v, str):
        return Lit("date", dt.date.fromisoformat(v))
    if t == "now" and isinstance(v, int) and data.get("unit") in MAX_INTERVAL and abs(v) <= MAX_INTERVAL[data["unit"]]:
        return Lit("now", (v, data["unit"]))
    raise ValueError(f"bad literal {data!r}")


_ALL_OPS = {"=", "!=", "<", "<=", ">", ">=", "in", "not in", "contains", "not contains", "starts_with",
            "not starts_with", "ends_with", "not ends_with", "is empty", "is not empty"}


def _node_from_json(data: Any, depth: int = 0):
    if depth > MAX_DEPTH + 1:
        raise ValueError("nested too deeply")
    if "and" in data or "or" in data:
        args = tuple(_node_from_json(a, depth + 1) for a in (data.get("and") or data.get("or")))
        if len(args) < 2:
            raise ValueError("and/or need two or more parts")
        return And(args) if "and" in data else Or(args)
    if "not" in data:
        return Not(_node_from_json(data["not"], depth + 1))
    op = data["op"]
    if op not in _ALL_OPS:
        raise ValueError(f"unknown operator {op!r}")
    spec = _resolve(data["field"], 1)
    values = tuple(_lit_from_json(v) for v in data.get("values", []))
    if (op in ("is empty", "is not empty")) != (not values) or (
        _NEGATED.get(op, op) not in ("in",) and len(values) > 1
    ):
        raise ValueError(f"wrong number of values for {op!r}")
    _check(spec, op, values, 1)
    return Cmp(spec, op, values)


def _collect_fields(node, out: set[str]) -> None:
    if isinstance(node, (And, Or)):
        for a in node.args:
            _collect_fields(a, out)
    elif isinstance(node, Not):
        _collect_fields(node.arg, out)
    else:
        out.add(node.field.path)


# --- Public API -------------------------------------------------------------------


@dataclass(frozen=True)
class Condition:
    """A parsed condition. Immutable; build one with ``parse`` or ``from_json``."""

    text: str
    root: Any = field(repr=False, compare=False)
    fields: frozenset[str] = field(default=frozenset(), compare=False)

    def __str__(self) -> str:
        return self.text

    def evaluate(self, lead, *, now: dt.datetime | None = None) -> bool:
        """Does this one lead match? Reads ``lead.account`` (and owner /
        stage) only when a path needs them."""
        return _evaluate(self.root, lead, now or timezone.now())

    def to_q(self, *, now: dt.datetime | None = None) -> Q:
        """A Q for ``Lead.objects.filter(...)``; same answer as evaluate."""
        return _to_q(self.root, now or timezone.now())

    def to_json(self) -> dict:
        return {"version": 1, "text": self.text, "tree": _node_to_json(self.root)}

    @classmethod
    def from_json(cls, data: dict) -> Condition:
        """Rebuild from ``to_json()``; a stored form that no longer fits the
        models (a removed field) raises ConditionError."""
        try:
            if not isinstance(data, dict) or data.get("version") != 1:
                raise ValueError("not a stored condition (version 1)")
            root = _node_from_json(data["tree"])
        except ConditionError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, InvalidOperation) as exc:
            raise ConditionError(1, f"invalid stored condition: {exc}") from None
        out: set[str] = set()
        _collect_fields(root, out)
        return cls(str(data.get("text", "")), root, frozenset(out))


def parse(text: str) -> Condition:
    """Parse condition text; raises ConditionError (a ValidationError) with
    the column and the reason when it is not valid."""
    if not isinstance(text, str):
        raise ConditionError(1, "a condition must be text")
    if len(text) > MAX_LENGTH:
        raise ConditionError(MAX_LENGTH + 1, f"condition is longer than {MAX_LENGTH} characters")
    if not text.strip():
        raise ConditionError(1, "empty condition")
    root = _Parser(text).parse()
    out: set[str] = set()
    _collect_fields(root, out)
    return Condition(text, root, frozenset(out))


def validate_condition(text: str) -> None:
    """Model/form field validator."""
    parse(text)


class ConditionField(models.TextField):
    """A condition stored as text, validated on ``full_clean``."""

    default_validators = [validate_condition]
    description = "Condition (martech.conditions language)"


def matching_leads(condition: Condition | str, *, queryset=None, now: dt.datetime | None = None):
    """The leads (of ``queryset``, default all) that match ``condition``."""
    from martech.models import Lead

    if isinstance(condition, str):
        condition = parse(condition)
    qs = Lead.objects.all() if queryset is None else queryset
    return qs.filter(condition.to_q(now=now))
