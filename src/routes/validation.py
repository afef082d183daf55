"""Request validation at the edge, once for every route.

JSON bodies are parsed strictly before any model sees them: NaN, Infinity (and numbers too
large for a double), strings holding a lone surrogate, and nesting deeper than
MAX_JSON_DEPTH are a 422 naming the field. Every 422, ours and FastAPI's, names the field
and caps the values it echoes, so an error body stays small whatever the request held.
"""

from __future__ import annotations

import email.message
import json
import math
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

#: Deepest nesting of a JSON body (the body itself is level 1). Free-form fields such as
#: job_data or executor_config sit one or two levels down, so each may nest about 30 deep.
MAX_JSON_DEPTH = 32
#: Longest echoed string in an error body; longer ones are cut with a marker.
MAX_ECHO_CHARS = 200
#: Errors listed in one 422 body; the rest are counted.
MAX_ERRORS = 10
MAX_PATH_PARTS = 8
LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})
#: Where a lone surrogate can come from once the body decoded as UTF-8: a \\u escape.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
SURROGATE = re.compile("[\ud800-\udfff]")

Path = tuple[str | int, ...]


class _NotFinite:
    """What the parser returns for NaN, Infinity or an overflowing number, to be reported."""

    def __init__(self, text: str) -> None:
        self.text = text


class _Flags:
    def __init__(self) -> None:
        self.not_finite = False


def parse_json(body: bytes) -> Any:
    """The body as JSON, or RequestValidationError naming where it breaks the rules."""
    flags = _Flags()
    try:
        text = body.decode("utf-8")
        value = json.loads(text, parse_constant=_constant(flags), parse_float=_float(flags))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, huge integers
        raise _invalid((), "json_invalid", f"not valid JSON: {_describe(exc)}") from None
    strings = SURROGATE_ESCAPE.search(text) is not None
    deep = text.count("[") + text.count("{") > MAX_JSON_DEPTH
    if flags.not_finite or strings or deep:
        problem = find_problem(value, strings)
        if problem is not None:
            raise _invalid(*problem)
    return value


def _constant(flags: _Flags) -> Callable[[str], _NotFinite]:
    def parse(text: str) -> _NotFinite:
        flags.not_finite = True
        return _NotFinite(text)

    return parse


def _float(flags: _Flags) -> Callable[[str], float | _NotFinite]:
    def parse(text: str) -> float | _NotFinite:
        number = float(text)
        if math.isfinite(number):
            return number
        flags.not_finite = True
        return _NotFinite(text)

    return parse


def _describe(exc: BaseException) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"the body is not UTF-8 (byte {exc.start})"
    if isinstance(exc, RecursionError):
        return f"nested deeper than {MAX_JSON_DEPTH} levels"
    return str(exc)[:MAX_ECHO_CHARS]


def find_problem(value: Any, check_strings: bool = True) -> tuple[Path, str, str] | None:
    """(path, error type, message) of the first value a JSON body may not hold, or None."""
    if type(value) is not dict and type(value) is not list:
        problem = _scalar_problem(value, check_strings)
        return None if problem is None else ((), *problem)
    stack: list[tuple[Any, Path]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if len(path) >= MAX_JSON_DEPTH:
            return path, "too_deep", f"nests deeper than {MAX_JSON_DEPTH} levels"
        for key, item in node.items() if type(node) is dict else enumerate(node):
            problem = _scalar_problem(key, check_strings)
            if problem is None and (type(item) is dict or type(item) is list):
                stack.append((item, (*path, key)))
                continue
            problem = problem or _scalar_problem(item, check_strings)
            if problem is not None:
                return (*path, key), *problem
    return None


def _scalar_problem(value: Any, check_strings: bool) -> tuple[str, str] | None:
    kind = type(value)
    if kind is _NotFinite:
        return "finite_number", f"{value.text} is not a finite number; JSON numbers must be finite"
    if check_strings and kind is str and SURROGATE.search(value) is not None:
        return "string_unicode", "holds a lone surrogate, which is not Unicode text"
    return None


def _invalid(path: Path, kind: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": kind, "loc": ("body", *path), "msg": message}])


def _json_body(request: Request) -> bool:
    """Whether FastAPI would parse this request's body as JSON (the same content types)."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class _ParsedRequest(Request):
    """A request whose JSON body was already parsed (strictly) by JsonRoute."""

    parsed: Any

    async def json(self) -> Any:
        return self.parsed


class JsonRoute(APIRoute):
    """The route class of every router: bodies are parsed by parse_json, not json.loads."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            if _json_body(request):
                request = _ParsedRequest(request.scope, request.receive)
                try:
                    body = await request.body()
                except ClientDisconnect:
                    raise HTTPException(
                        400, "the client went away while sending the body"
                    ) from None
                request.parsed = parse_json(body) if body else None
            return await handler(request)

        return strict


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """422 naming the first bad field, each error's echoed input capped."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    shown = [_public(error) for error in errors[:MAX_ERRORS]]
    body: dict[str, Any] = {
        "detail": shown,
        "error": "ValidationError",
        "field": shown[0]["field"] if shown else "body",
    }
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return JSONResponse(body, status_code=422)


def _public(error: dict[str, Any]) -> dict[str, Any]:
    loc = [_part(part) for part in error.get("loc", ())]
    named = loc[1:] if len(loc) > 1 and loc[0] in LOCATIONS else loc
    field = ".".join(str(part) for part in named[:MAX_PATH_PARTS]) or "body"
    public: dict[str, Any] = {
        "loc": loc[: MAX_PATH_PARTS + 1],
        "field": field + ("..." if len(named) > MAX_PATH_PARTS else ""),
        "msg": echo(str(error.get("msg", "")), 500),
        "type": str(error.get("type", "value_error")),
    }
    if "input" in error:
        public["input"] = echo(error["input"])
    if isinstance(error.get("ctx"), dict):
        public["ctx"] = {str(key): echo(value) for key, value in error["ctx"].items()}
    return public


def _part(part: Any) -> str | int:
    return part if type(part) is int else str(echo(str(part), 50))


def echo(value: Any, limit: int = MAX_ECHO_CHARS) -> Any:
    """A value safe and small enough to put in an error body."""
    if value is None or (type(value) in (bool, int) and abs(value) < 10**15):
        return value
    if type(value) is float:
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict | list | tuple):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = value if isinstance(value, str) else str(value)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
