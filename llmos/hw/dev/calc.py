"""The `calc` device: exact arithmetic and common math, evaluated without `eval`.

The expression is parsed with `ast` and walked over an allowlist of node types: numbers,
`+ - * / // % **`, unary `+ -`, parentheses, comparisons (`== != < <= > >=`, chained), calls to
a fixed set of functions (sqrt, abs, round, floor, ceil, log, exp, sin, cos, tan, factorial,
gcd, min, max) and the constants pi and e. Any other node (names, attributes, subscripts,
lambdas, comprehensions, strings) is refused with a one-line error.

Invariants:
- Integers are exact big ints. Decimal literals are read from their source text into
  `fractions.Fraction`, so `0.1 + 0.2 == 0.3` holds and the result prints as "0.3". Division
  of exact numbers is exact (`1/3` is the fraction 1/3).
- Only irrational functions (sqrt of a non-square, log, exp, trig, a non-integer power) and
  the constants pi and e give floats; a float operand makes the result a float, and the result
  says `exact: false`.
- Work is bounded before it is done: the expression length, the digits of every exact number
  (`CALC_MAX_DIGITS`, checked before a power is computed, so `10**10**10` is refused at once),
  and the factorial argument.
- Every failure (syntax error with its column, division by zero, unknown name, a limit) is a
  `DeviceResult` failure, never an exception.

What this module does not do: symbolic algebra, complex numbers, units, or arbitrary-precision
transcendental functions (those use the platform's double precision).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction
from typing import Any

from llmos import params
from llmos.hw.dev.base import CallContext, Device, DeviceResult

Number = int | Fraction | float

_LOG10_2 = math.log10(2)


class CalcError(Exception):
    """A refusal or arithmetic failure; its message goes to the model as the error."""


def _digits(n: int) -> int:
    """An upper estimate of the decimal digits of `n` (cheap: no str conversion)."""
    return int(abs(n).bit_length() * _LOG10_2) + 1


def _check(value: Number) -> Number:
    """`value` normalised (whole fractions to int) after checking it against the limits."""
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CalcError("result is not a finite number")
        return value
    if isinstance(value, Fraction):
        if max(_digits(value.numerator), _digits(value.denominator)) > params.CALC_MAX_DIGITS:
            raise CalcError(f"result too large: more than {params.CALC_MAX_DIGITS} digits")
        return value.numerator if value.denominator == 1 else value
    if _digits(value) > params.CALC_MAX_DIGITS:
        raise CalcError(f"result too large: more than {params.CALC_MAX_DIGITS} digits")
    return value


def _exact(value: Number) -> bool:
    return isinstance(value, int | Fraction)


def _float(value: Number) -> float:
    try:
        return float(value)
    except OverflowError:
        raise CalcError("number too large for a floating-point function") from None


def _int_arg(name: str, value: Number) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, Fraction) and value.denominator == 1:
        return value.numerator
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise CalcError(f"{name}() needs an integer, got {_format(value)}")


def _power(base: Number, exp: Number) -> Number:
    if _exact(base) and isinstance(exp, int):
        b = Fraction(base)
        if b in (0, 1, -1) or exp == 0:
            if b == 0 and exp < 0:
                raise CalcError("division by zero (0 to a negative power)")
            return _check(b**exp)
        est = abs(exp) * max(math.log10(abs(b.numerator)), math.log10(b.denominator))
        if est > params.CALC_MAX_DIGITS:
            raise CalcError(
                f"exponent too large: the result would have about {est:.3g} digits "
                f"(limit {params.CALC_MAX_DIGITS})"
            )
        return _check(b**exp)
    fb, fe = _float(base), _float(exp)
    if fb < 0 and not fe.is_integer():
        raise CalcError("a negative number to a fractional power is not a real number")
    if fb == 0 and fe < 0:
        raise CalcError("division by zero (0 to a negative power)")
    try:
        return _check(math.pow(fb, fe))
    except OverflowError:
        raise CalcError("result too large for a floating-point number") from None


def _div(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalcError("division by zero")
    if _exact(a) and _exact(b):
        return _check(Fraction(a) / Fraction(b))
    return _check(_float(a) / _float(b))


def _floordiv(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalcError("division by zero")
    if _exact(a) and _exact(b):
        return _check(Fraction(a) // Fraction(b))
    return _check(_float(a) // _float(b))


def _mod(a: Number, b: Number) -> Number:
    if b == 0:
        raise CalcError("modulo by zero")
    if _exact(a) and _exact(b):
        return _check(Fraction(a) % Fraction(b))
    return _check(_float(a) % _float(b))


def _arith(op: Callable[[Any, Any], Any]) -> Callable[[Number, Number], Number]:
    def apply(a: Number, b: Number) -> Number:
        if _exact(a) and _exact(b):
            return _check(op(Fraction(a), Fraction(b)))
        return _check(op(_float(a), _float(b)))

    return apply


_BINOPS: dict[type[ast.operator], Callable[[Number, Number], Number]] = {
    ast.Add: _arith(operator.add),
    ast.Sub: _arith(operator.sub),
    ast.Mult: _arith(operator.mul),
    ast.Div: _div,
    ast.FloorDiv: _floordiv,
    ast.Mod: _mod,
    ast.Pow: _power,
}

_CMPOPS: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise CalcError("sqrt() of a negative number")
    if _exact(x):
        f = Fraction(x)
        rn, rd = math.isqrt(f.numerator), math.isqrt(f.denominator)
        if rn * rn == f.numerator and rd * rd == f.denominator:
            return _check(Fraction(rn, rd))
    return _check(math.sqrt(_float(x)))


def _log(x: Number, base: Number | None = None) -> Number:
    if x <= 0:
        raise CalcError("log() of a number that is not positive")
    if base is not None and (base <= 0 or base == 1):
        raise CalcError("log() base must be positive and not 1")
    # math.log accepts big ints exactly (no float overflow); fractions go through float.
    xv: int | float = x if isinstance(x, int) else _float(x)
    if base is None:
        return _check(math.log(xv))
    bv: int | float = base if isinstance(base, int) else _float(base)
    return _check(math.log(xv, bv))


def _float_fn(name: str, fn: Callable[[float], float]) -> Callable[[Number], Number]:
    def apply(x: Number) -> Number:
        try:
            return _check(fn(_float(x)))
        except (OverflowError, ValueError):
            raise CalcError(f"{name}() is out of range for {_format(x)}") from None

    return apply


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return _check(round(x))
    n = _int_arg("round", ndigits)
    if abs(n) > params.CALC_MAX_DIGITS:
        raise CalcError("round() digits out of range")
    if isinstance(x, float):
        return _check(round(x, n))
    return _check(round(Fraction(x), n))


def _factorial(x: Number) -> Number:
    n = _int_arg("factorial", x)
    if n < 0:
        raise CalcError("factorial() of a negative number")
    if n > params.CALC_MAX_FACTORIAL:
        raise CalcError(f"factorial() argument too large (limit {params.CALC_MAX_FACTORIAL})")
    return _check(math.factorial(n))


def _gcd(*xs: Number) -> Number:
    return math.gcd(*(_int_arg("gcd", x) for x in xs))


def _minmax(fn: Callable[..., Any]) -> Callable[..., Number]:
    def apply(*xs: Number) -> Number:
        if not xs:
            raise CalcError("min()/max() need at least one argument")
        result: Number = fn(xs)
        return result

    return apply


# name -> (function, least args, most args or None for any)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "sqrt": (_sqrt, 1, 1),
    "abs": (lambda x: _check(abs(x)), 1, 1),
    "round": (_round, 1, 2),
    "floor": (lambda x: _check(math.floor(x)), 1, 1),
    "ceil": (lambda x: _check(math.ceil(x)), 1, 1),
    "log": (_log, 1, 2),
    "exp": (_float_fn("exp", math.exp), 1, 1),
    "sin": (_float_fn("sin", math.sin), 1, 1),
    "cos": (_float_fn("cos", math.cos), 1, 1),
    "tan": (_float_fn("tan", math.tan), 1, 1),
    "factorial": (_factorial, 1, 1),
    "gcd": (_gcd, 1, None),
    "min": (_minmax(min), 1, None),
    "max": (_minmax(max), 1, None),
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}


class _Evaluator:
    def __init__(self, source: str) -> None:
        self.source = source

    def eval(self, node: ast.AST) -> Number:
        if isinstance(node, ast.Expression):
            return self.eval(node.body)
        if isinstance(node, ast.Constant):
            return self._constant(node)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.BitXor):
                raise CalcError("'^' is not supported; use ** for powers")
            fn = _BINOPS.get(type(node.op))
            if fn is None:
                raise CalcError(f"operator not supported: {type(node.op).__name__}")
            return fn(self.eval(node.left), self.eval(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            value = self.eval(node.operand)
            return _check(-value if isinstance(node.op, ast.USub) else +value)
        if isinstance(node, ast.Compare):
            left = self.eval(node.left)
            for op, comp in zip(node.ops, node.comparators, strict=True):
                right = self.eval(comp)
                if not _CMPOPS[type(op)](left, right):
                    return False
                left = right
            return True
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise CalcError(
                f"unknown name {node.id!r} (known: {', '.join([*_CONSTANTS, *_FUNCTIONS])})"
            )
        if isinstance(node, ast.Call):
            return self._call(node)
        raise CalcError(f"not allowed in an expression: {type(node).__name__}")

    def _constant(self, node: ast.Constant) -> Number:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise CalcError(f"not a number: {value!r}")
        if isinstance(value, int):
            return _check(value)
        text = (ast.get_source_segment(self.source, node) or repr(value)).replace("_", "")
        try:
            dec = Decimal(text)
        except InvalidOperation:
            return _check(value)
        if not dec.is_finite() or abs(dec.adjusted()) > params.CALC_MAX_DIGITS:
            raise CalcError(f"number out of range: {text}")
        return _check(Fraction(dec))

    def _call(self, node: ast.Call) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            name = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise CalcError(f"unknown function {name!r} (known: {', '.join(_FUNCTIONS)})")
        if node.keywords:
            raise CalcError(f"{node.func.id}() takes no keyword arguments")
        fn, least, most = _FUNCTIONS[node.func.id]
        n = len(node.args)
        if n < least or (most is not None and n > most):
            want = str(least) if least == most else f"{least} to {most or 'any'}"
            raise CalcError(f"{node.func.id}() takes {want} argument(s), got {n}")
        return fn(*(self.eval(a) for a in node.args))


def _format(value: Number) -> str:
    """A value as the model reads it: exact decimals for terminating fractions."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    den = value.denominator
    twos = fives = 0
    while den % 2 == 0:
        den //= 2
        twos += 1
    while den % 5 == 0:
        den //= 5
        fives += 1
    if den != 1:
        return f"{value.numerator}/{value.denominator}"
    scale = max(twos, fives)
    digits = value.numerator * 10**scale // value.denominator
    sign = "-" if digits < 0 else ""
    text = str(abs(digits)).rjust(scale + 1, "0")
    whole, frac = text[:-scale], text[-scale:].rstrip("0")
    return f"{sign}{whole}.{frac}" if frac else f"{sign}{whole}"


def _approx(value: Fraction) -> str:
    with localcontext() as dctx:
        dctx.prec = params.CALC_DECIMAL_DIGITS
        return str(Decimal(value.numerator) / Decimal(value.denominator))


def evaluate(expression: str) -> dict[str, Any]:
    """Evaluate `expression`; returns {"result", "exact"} (and "decimal" for 1/3-like values).

    Raises CalcError with a one-line message on any refusal or arithmetic failure.
    """
    if len(expression) > params.CALC_MAX_EXPR_CHARS:
        raise CalcError(f"expression too long (limit {params.CALC_MAX_EXPR_CHARS} characters)")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise CalcError(f"syntax error at column {exc.offset or 0}: {exc.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalcError("expression too deeply nested or malformed") from None
    try:
        value = _Evaluator(expression.strip()).eval(tree)
    except RecursionError:
        raise CalcError("expression too deeply nested") from None
    except ZeroDivisionError:
        raise CalcError("division by zero") from None
    except (OverflowError, ValueError) as exc:
        raise CalcError(f"math error: {exc}") from None
    result: dict[str, Any] = {"result": _format(value), "exact": not isinstance(value, float)}
    if isinstance(value, Fraction) and "/" in result["result"]:
        result["decimal"] = _approx(value)
    return result


class CalcDevice(Device):
    name = "calc"
    description = (
        "Exact calculator. Evaluates one arithmetic expression: numbers, + - * / // % ** "
        "(use ** for powers, not ^), parentheses, comparisons (== != < <= > >=), the functions "
        "sqrt abs round floor ceil log(x[, base]) exp sin cos tan factorial gcd min max, and "
        "the constants pi and e. Integers are exact at any size and decimals are exact "
        "(0.1+0.2 gives 0.3); 1/3 gives the fraction '1/3' plus a decimal. Returns "
        '{"result": string, "exact": bool}. No variables or assignments.'
    )
    schema: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "The expression, e.g. '2**100 / 3' or 'sqrt(2) * pi'.",
                "minLength": 1,
                "maxLength": params.CALC_MAX_EXPR_CHARS,
                # Only what an expression can hold: the grammar built from this schema keeps
                # a small model from writing anything else (template braces, prose).
                "pattern": "^[0-9a-z(-][0-9a-z_+*/%().,<>=! -]*$",
            }
        },
        "required": ["expression"],
        "additionalProperties": False,
    }

    def call(self, args: dict[str, Any], ctx: CallContext) -> DeviceResult:
        expression = args.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            return DeviceResult.failure("calc: 'expression' must be a non-empty string")
        try:
            return DeviceResult.success(evaluate(expression))
        except CalcError as exc:
            return DeviceResult.failure(f"calc: {exc}")
