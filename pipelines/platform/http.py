"""Edge checks for BentoML JSON APIs, and an OpenAPI document that says what the service really answers.

`harden(Service, max_body=...)` wires both in through public BentoML APIs:

- `Service.add_asgi_middleware(RequestGuard, ...)`: for each POST API route, before BentoML reads the body:
  415 unless Content-Type is application/json (or absent: BentoML reads that as JSON too), 413 when
  Content-Length or the bytes actually received (chunked bodies) exceed `max_body`, and 400 with one sentence
  naming the bad field when the body does not validate against the route's input model. Every error body is
  `{"error": "<what>", "detail": "<one sentence: which field, what to send>"}`. A 4xx that BentoML itself
  still produces (its 400 has `detail` as a list, its 415 is a JSON list) is rewritten to that shape.
- `Service.mount_asgi_app(docs_app, path="/")`: GET /docs (redirect to the Swagger UI that BentoML serves at /)
  and GET /docs.json (BentoML's spec plus the 413 / 415 answers, and `nullable` on Optional fields, which
  BentoML's schema flattening drops).
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ValidationError

from pipelines.platform.errors import ServiceUnavailable

log = logging.getLogger("mlsd.http")

Scope = dict[str, Any]
ERROR_SCHEMA = "InvalidArgument"  # BentoML's component: {error: string (required), detail: string}


def _one_sentence(errors: Sequence[Mapping[str, Any]]) -> str:
    """Pydantic's errors as one sentence: the first problem, the field it is in, and how to fix it."""
    first = errors[0]
    loc, kind, msg = tuple(first.get("loc", ())), first.get("type", ""), str(first.get("msg", ""))
    field = ".".join(str(part) for part in loc)
    if kind == "json_invalid":
        sentence = f"The body is not valid JSON ({msg.removeprefix('Invalid JSON: ')}): send one JSON object"
    elif not loc:
        sentence = "The body must be a JSON object (not an array, a string, a number or null)"
    elif kind == "missing":
        sentence = f"Field '{field}' is missing: add it"
    elif kind == "extra_forbidden":
        sentence = f"Field '{field}' is not allowed: remove it"
    elif kind in ("value_error", "assertion_error"):
        # The project's validators word their messages as predicates ("is before 1970").
        sentence = f"Field '{field}' {msg.removeprefix('Value error, ').removeprefix('Assertion failed, ')}"
    else:
        sentence = f"Field '{field}' is invalid: {msg[:1].lower()}{msg[1:]}"
    others = list(dict.fromkeys(".".join(map(str, e.get("loc", ()))) or "body" for e in errors[1:]))
    others = [f"'{name}'" for name in others if name != field]
    if others:
        sentence += f" (also check {', '.join(others)})"
    return sentence.rstrip(".") + "."


async def _send_error(send: Any, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        # The rest of the body is never read: tell the client this connection is done.
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _conforms(body: bytes) -> bool:
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return (
        isinstance(data, dict)
        and isinstance(data.get("error"), str)
        and isinstance(data.get("detail", ""), str)
        and set(data) <= {"error", "detail"}
    )


def _rewrite(status: int, body: bytes) -> bytes:
    """BentoML's own 4xx bodies in the declared shape (its 400 has `detail` as a list, its 415 is a one-item list)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]  # app.py's `detail = ({"error": str(exc)},)`: a one-element tuple
    detail: Any = data.get("detail") if isinstance(data, dict) else None
    if isinstance(detail, list) and detail and all(isinstance(e, dict) for e in detail):
        detail = _one_sentence(detail)
    error = data.get("error") if isinstance(data, dict) else None
    error = error if isinstance(error, str) else f"HTTP {status}"
    if status == 400 and isinstance(detail, str):
        error = "Invalid request body"
    return json.dumps({"error": error, "detail": detail if isinstance(detail, str) else error + "."}).encode()


class RequestGuard:
    """Pure ASGI middleware (no BaseHTTPMiddleware: no extra task per request, streaming untouched)."""

    def __init__(self, app: Any, *, models: Mapping[str, type[BaseModel]], max_body: int = 64 * 1024) -> None:
        self.app = app
        self.models = dict(models)
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        model = self.models.get(scope.get("path", "")) if scope["type"] == "http" else None
        if model is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        media_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if media_type != "application/json":
            await _send_error(
                send,
                415,
                "Unsupported media type",
                f"Content-Type '{media_type or '(empty)'}' is not accepted: send the body as JSON with "
                "Content-Type: application/json.",
            )
            return
        too_large = f"The body is larger than {self.max_body} bytes: send one {model_title(model)} as compact JSON."
        declared = headers.get("content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > self.max_body:
            await _send_error(send, 413, "Request body too large", too_large)  # no byte of it read
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # chunked (or lying) bodies: count what actually arrives, stop at the cap
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _send_error(send, 413, "Request body too large", too_large)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            model.model_validate_json(body or b"{}")  # what BentoML's JSONSerde does (its JSON serde)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            await _send_error(send, 400, "Invalid request body", _one_sentence(errors))
            return
        except Exception:  # a validator that raised something else (OverflowError, ...): still the input's fault
            log.warning("Request body of %s broke validation", scope["path"], exc_info=True)
            await _send_error(
                send,
                400,
                "Invalid request body",
                f"The body could not be read as a {model_title(model)}: check its values.",
            )
            return

        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the server would

        held: dict[str, Any] | None = None
        parts: list[bytes] = []

        async def guarded_send(message: dict[str, Any]) -> None:
            # Only a 4xx from the app is held and checked; everything else streams straight through.
            nonlocal held
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                held = message
                return
            if held is None:
                await send(message)
                return
            parts.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body_out = b"".join(parts)
            if not _conforms(body_out):
                body_out = _rewrite(held["status"], body_out)
            hdrs = [(k, v) for k, v in held.get("headers", []) if k.lower() not in (b"content-length", b"content-type")]
            hdrs += [(b"content-type", b"application/json"), (b"content-length", str(len(body_out)).encode())]
            await send({**held, "headers": hdrs})
            await send({"type": "http.response.body", "body": body_out})

        await self.app(scope, replay, guarded_send)


def _nullable(spec_schema: dict[str, Any], model_schema: dict[str, Any]) -> None:
    """BentoML keeps only the first branch of `anyOf` (its method schema): `str | None` is declared as string."""
    for name, prop in model_schema.get("properties", {}).items():
        if any(branch.get("type") == "null" for branch in prop.get("anyOf", ())):
            target = spec_schema.get("properties", {}).get(name)
            if target is not None and "$ref" not in target:
                target["nullable"] = True


def openapi_document(service: Any, routes: Iterable[str]) -> dict[str, Any]:
    spec = json.loads(json.dumps(service.openapi_spec.asdict()))  # asdict() keys responses by int: "200" as served
    error_ref = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}}
    spec["components"]["schemas"][ERROR_SCHEMA]["required"] = ["error", "detail"]
    for api in service.apis.values():
        operation = spec["paths"].get(api.route, {}).get("post")
        if operation is None:
            continue
        if api.route in routes:
            responses = operation["responses"]
            operation["requestBody"]["required"] = True  # BentoML leaves it out: OpenAPI's default is optional
            responses["400"]["description"] = "The body does not validate: `detail` names the field"
            responses["413"] = {"description": "Request body too large", "content": error_ref}
            responses["415"] = {"description": "Content-Type is not application/json", "content": error_ref}
        request = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        response = operation["responses"]["200"].get("content", {}).get("application/json", {}).get("schema")
        if request is not None:
            _nullable(request, api.input_spec.model_json_schema(mode="serialization"))
        if response is not None:
            _nullable(response, api.output_spec.model_json_schema(mode="serialization"))
    return spec


def docs_app(service: Any, routes: Iterable[str]) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, RedirectResponse
    from starlette.routing import Route

    routes = frozenset(routes)
    spec = functools.cache(lambda: openapi_document(service, routes))

    async def docs(_: Any) -> Any:
        return RedirectResponse("/", status_code=307)  # BentoML's Swagger UI lives at /, reading ./docs.json

    async def docs_json(_: Any) -> Any:
        return JSONResponse(spec())

    return Starlette(routes=[Route("/docs", docs, methods=["GET"]), Route("/docs.json", docs_json, methods=["GET"])])


def harden(service: Any, max_body: int = 64 * 1024) -> None:
    """Call once, after the `@bentoml.service` class: `harden(FraudService, max_body=...)`.

    Every API route is guarded with the input model BentoML itself validates it with.
    """
    models = {api.route: api.input_spec for api in service.apis.values()}
    service.add_asgi_middleware(RequestGuard, models=models, max_body=max_body)
    # A mount at / only answers the paths its routes match fully, and mounts come before BentoML's own /docs.json
    # route, so this /docs.json wins.
    service.mount_asgi_app(docs_app(service, models.keys()), path="/", name="docs")


def model_title(model: type[BaseModel]) -> str:
    """`TransactionEvent` for BentoML's generated `TransactionEventIODescriptor`."""
    return model.__name__.removesuffix("IODescriptor") or "JSON object"


@contextmanager
def unavailable_as_503() -> Iterator[None]:
    """A service that is not ready yet (no champion loaded) answers 503 with the reason, not a 500."""
    try:
        yield
    except ServiceUnavailable as exc:
        from bentoml.exceptions import ServiceUnavailable as NotReady

        raise NotReady(str(exc)) from None
