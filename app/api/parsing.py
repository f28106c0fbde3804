"""Strict request parsing, one copy for the fast path and the FastAPI routes (StrictRoute): the body's media type
must be the one the route reads (415), a JSON key given twice or an object of too many keys is a 422, malformed JSON
of any kind a 400, never a 500; a form field given twice or unknown is a 422. The rules: docs/architecture.md."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import params
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from app.core.errors import ServiceError, field_error, invalid, summary, truncate
from app.http.handlers import problem_response

JSON_MEDIA_TYPE = "application/json"
FORM_MEDIA_TYPE = "multipart/form-data"
MAX_FORM_PARTS = 8  # an /encode form has two fields; a few more can still be named as repeated or unknown
PARSED_JSON = "cvae.parsed_json"  # scope key: a body the fast path parsed and then handed to the route


MAX_OBJECT_KEYS = 32  # the API's bodies have at most 8 fields: an object with more is refused as one error


class DuplicateKeys(ValueError):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(", ".join(keys))
        self.keys = keys


class TooManyKeys(ValueError):
    def __init__(self, keys: list[str]) -> None:
        super().__init__(f"{len(keys)} keys")
        self.keys = keys


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower case, without parameters; "" when there is none."""
    return (content_type or "").partition(";")[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    media = media_type(content_type)
    return media == JSON_MEDIA_TYPE or (media.startswith("application/") and media.endswith("+json"))


def require_json(content_type: str | None) -> None:
    """415 unless the body is declared as JSON."""
    if not is_json(content_type):
        given = f"not {truncate(content_type)}" if content_type else "the request had no Content-Type"
        raise ServiceError(
            415, f"send the body as JSON, with Content-Type: {JSON_MEDIA_TYPE} ({given})", kind="unsupported-media-type"
        )


def require_form(content_type: str | None) -> None:
    """415 unless the body is declared as multipart/form-data."""
    if media_type(content_type) != FORM_MEDIA_TYPE:
        given = f"not {truncate(content_type)}" if content_type else "the request had no Content-Type"
        raise ServiceError(
            415,
            f"send the upload as {FORM_MEDIA_TYPE} with the picture in a field named file, e.g. curl -F "
            f"file=@digit.png ({given})",
            kind="unsupported-media-type",
        )


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_KEYS:  # refused here, before pydantic would build an error for each unknown one
        raise TooManyKeys([key for key, _ in pairs])
    obj = dict(pairs)
    if len(obj) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        raise DuplicateKeys([key for key, n in counts.items() if n > 1])
    return obj


# One decoder, made once: json.loads(body, object_pairs_hook=...) would build a new one on every call.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)


def parse_json(body: bytes) -> Any:
    """A JSON body -> its value, read as json.loads reads bytes (UTF-8, -16 or -32). 400 (malformed-json) for
    anything it cannot read, 422 for a repeated key."""
    try:
        return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
    except DuplicateKeys as e:
        errors = [field_error(["body", key], f"key {key!r} is given more than once; give it once", "duplicate_key")
                  for key in e.keys]  # fmt: skip
        raise invalid(f"the JSON body repeats a key: {summary(errors)}", errors) from None
    except TooManyKeys as e:
        named = ", ".join(truncate(repr(key), 40) for key in e.keys[:3])
        msg = f"an object with {len(e.keys)} keys ({named}, ...); the API's objects have at most {MAX_OBJECT_KEYS}"
        errors = [field_error(["body"], msg, "too_many_keys")]
        raise invalid(summary(errors), errors) from None
    except json.JSONDecodeError as e:
        detail = f"the body is not valid JSON: {e.msg} at character {e.pos}"
    except RecursionError:
        detail = "the body is not valid JSON: it is nested too deeply"
    except ValueError as e:  # not UTF-8 (UnicodeDecodeError), a number too long to convert, ...
        detail = f"the body is not valid JSON: {truncate(str(e))}"
    raise ServiceError(400, detail, kind="malformed-json")


def check_form_fields(names: list[str], allowed: frozenset[str]) -> None:
    """422 naming every field given more than once and every field the route does not read."""
    counts = Counter(names)
    errors = [
        field_error(["body", name], f"given {n} times; give it once", "repeated_field")
        for name, n in counts.items()
        if n > 1 and name in allowed
    ]
    errors += [
        field_error(["body", name], f"unknown field; the fields are {', '.join(sorted(allowed))}", "extra_forbidden")
        for name in counts
        if name not in allowed
    ]
    if errors:
        raise invalid(summary(errors), errors)


class StrictRequest(Request):
    """A route's request whose body has been checked by check_json() or check_form() before FastAPI reads it."""

    _parsed: Any

    async def check_json(self) -> None:
        require_json(self.headers.get("content-type"))
        body = await self.body()
        if body:  # an empty body is left to FastAPI, which says which field is missing
            parsed = self.scope.pop(PARSED_JSON, self)
            self._parsed = parse_json(body) if parsed is self else parsed

    async def json(self) -> Any:
        return self._parsed if hasattr(self, "_parsed") else await super().json()

    async def check_form(self, allowed: frozenset[str]) -> None:
        require_form(self.headers.get("content-type"))
        form = await self.form(max_files=MAX_FORM_PARTS, max_fields=MAX_FORM_PARTS)  # cached: FastAPI gets it
        check_form_fields([name for name, _ in form.multi_items()], allowed)


class StrictRoute(APIRoute):
    """An APIRoute (a router's route_class) whose body goes through StrictRequest's checks first: a JSON body
    route takes JSON only, parsed strictly; a form route takes multipart/form-data with each of its fields at most
    once and no other. The checks' errors are answered as problem details, as every other error is."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        form = isinstance(self.body_field.field_info, params.Form)
        fields = frozenset(param.alias for param in self.dependant.body_params)

        async def strict_handler(request: Request) -> Response:
            strict = StrictRequest(request.scope, request.receive)
            try:
                await (strict.check_form(fields) if form else strict.check_json())
            except ServiceError as e:
                return problem_response(e)
            return await handler(strict)

        return strict_handler
