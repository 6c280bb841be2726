"""The OpenAPI document says exactly what the server does.

Litestar generates the document from the handlers; this module finishes it once, when
the app is built, with what the generator cannot know:

- request bodies refuse unknown fields (`forbid_unknown_fields`): `additionalProperties:
  false`; a PATCH needs one field at least; limits that are settings (the shortest
  password) and the agents a new conversation may name (a system agent's name or an id);
- an optional query or header parameter is absent, never `null`;
- every status code each route can answer, from its guards, parameters and body, plus
  the few that only its handler knows (`EXTRA_STATUSES`);
- every content type: Server-Sent Events and NDJSON beside JSON.

`StrictParameters` then holds the server to the parameters' schema where Litestar is
lenient: a scalar query parameter given twice, or `null`, `1.0`, `yes` for an integer or a
boolean (Litestar would take one of the values, or read `null` as absent) is 400.

And it mends one Litestar 2 bug: the `Allow` header of the OPTIONS handler it adds to a
path lists only the methods of the first handler registered there.
"""

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, cast

import msgspec
from litestar import Litestar, Request, Response
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.enums import MediaType
from litestar.handlers import HTTPRouteHandler
from litestar.params import ParameterKwarg
from litestar.routes import HTTPRoute
from litestar.status_codes import HTTP_204_NO_CONTENT
from litestar.types import Scope

from threadlog.http.errors import ERROR_RESPONSES, BadRequest
from threadlog.http.schemas import NOT_BLANK
from threadlog.infra.settings import Settings

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

EXTRA_STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("POST", "/v1/conversations/{conversation_id}/messages"): (409, 413),
    ("PATCH", "/v1/conversations/{conversation_id}"): (409,),
    ("POST", "/v1/conversations/{conversation_id}/clear"): (409,),
    ("GET", "/v1/conversations/{conversation_id}/state"): (409,),
    ("POST", "/v1/runs/{run_id}/cancel"): (409,),
    ("GET", "/v1/runs/{run_id}/result"): (408,),
    ("POST", "/v1/users/register"): (409,),
    ("POST", "/v1/users/login"): (401,),
    ("POST", "/v1/admin/users"): (409,),
    ("GET", "/v1/stream"): (406,),
    ("POST", "/v1/conversations"): (409,),
    ("POST", "/v1/agents/{agent_id}/try"): (409, 413),
    ("POST", "/v1/agents/{agent_id}/publish"): (409,),
    ("GET", "/v1/agents/{agent_id}"): (410,),
    ("GET", "/v1/agents/{agent_id}/versions"): (410,),
    ("PATCH", "/v1/agents/{agent_id}"): (410,),
    # Another user's thread (404), a busy or archived thread or another agent (409).
    ("POST", "/v1/ag-ui"): (404, 409),
}
"""Statuses only the handler knows of (conflicts with the current state, timeouts)."""

MIN_POSITION_CONFLICT = 409
"""A `min_position` past the store's last position is 409 `position_not_reached`."""

SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "accessToken": {
        "type": "apiKey",
        "in": "query",
        "name": "access_token",
        "description": "A JWT, for browsers' EventSource and WebSocket (no headers)",
    },
}
"""Any one of them authenticates (docs: README, Access); the few public routes need none."""

ERROR_DESCRIPTIONS = {
    **ERROR_RESPONSES,
    406: "Not acceptable: this route answers only the media types it lists",
    408: "Did not happen within the time asked for (ask again)",
    409: "Conflicts with the current state (e.g. a position not reached yet)",
    410: "Gone: the agent is retired (conversations using it keep working)",
    431: "Request headers too large",
}


_SCALARS = {
    "integer": re.compile(r"-?[0-9]+"),
    "number": re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"),
    "boolean": re.compile(r"true|false"),
}
_FORMATS = {
    "uuid": re.compile(
        r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    )
}


@dataclass(frozen=True)
class ParameterRule:
    name: str
    location: str  # query | header
    many: bool  # an array: may repeat
    shape: re.Pattern[str] | None  # what a scalar's text must look like


class StrictParameters:
    """A `before_request` hook: each operation's parameters as its schema says."""

    def __init__(self) -> None:
        self.rules: dict[int, list[ParameterRule]] = {}

    def learn(self, handler: HTTPRouteHandler, parameters: list[dict[str, Any]]) -> None:
        rules = []
        for parameter in parameters:
            location = parameter.get("in")
            if location not in ("query", "header"):
                continue
            schema = parameter.get("schema", {})
            many = schema.get("type") == "array"
            shape = None
            if not many:
                shape = _FORMATS.get(str(schema.get("format"))) or _SCALARS.get(
                    str(schema.get("type"))
                )
            rules.append(ParameterRule(parameter["name"], location, many, shape))
        self.rules[id(handler)] = rules

    def __call__(self, request: Request[Any, Any, Any]) -> None:
        for rule in self.rules.get(id(request.route_handler), ()):
            if rule.location == "query":
                values = request.query_params.getall(rule.name, [])
            else:
                values = request.headers.getall(rule.name, [])
            if len(values) > 1 and not rule.many:
                raise BadRequest(
                    f"{rule.name} is given {len(values)} times; give it once",
                    extra={"field": rule.name},
                )
            if rule.shape is not None and values and not rule.shape.fullmatch(values[0]):
                raise BadRequest(
                    f"{rule.name}: {values[0]!r} is not of the type the schema gives",
                    extra={"field": rule.name},
                )


def finish_contract(
    app: Litestar, settings: Settings, agents: Iterable[str], strict: StrictParameters
) -> None:
    """Mends the OPTIONS handlers and completes the OpenAPI document (served as is)."""
    _mend_allow_headers(app)
    document = app.plugins.get(OpenAPIPlugin).provide_openapi_schema()
    structs = dict(_request_structs(app))
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name, struct in structs.items():
        if name in schemas and struct.__struct_config__.forbid_unknown_fields:
            schemas[name]["additionalProperties"] = False
        _restore_lower_bounds(schemas, name, struct)
    names = sorted(agents)
    _refine_bodies(schemas, settings, names)
    _refine_ag_ui(document, names)
    document["components"]["securitySchemes"] = SECURITY_SCHEMES
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method not in METHODS:
                continue
            handler = _handler_for(app, path, method.upper())
            _refine_operation(handler, path, method.upper(), operation)
            if handler is not None:
                strict.learn(handler, operation.get("parameters", []))
    _content_types(document["paths"])


def _mend_allow_headers(app: Litestar) -> None:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        allow = ", ".join(sorted(route.methods))
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"} and handler.handler_name == "options_handler":
                handler._fn = _options_answer(allow)


def _options_answer(allow: str) -> Any:
    def options_handler(scope: Scope) -> Response[None]:
        return Response(
            content=None,
            status_code=HTTP_204_NO_CONTENT,
            headers={"Allow": allow},
            media_type=MediaType.TEXT,
        )

    return options_handler


def _handlers(app: Litestar) -> Iterator[HTTPRouteHandler]:
    for route in app.routes:
        if isinstance(route, HTTPRoute):
            yield from route.route_handlers


def _request_structs(app: Litestar) -> Iterator[tuple[str, type[msgspec.Struct]]]:
    """Every Struct a request body holds, nested ones too."""
    for handler in _handlers(app):
        data = handler.parsed_fn_signature.parameters.get("data")
        if data is None:
            continue
        for kind in (data.annotation, *(inner.annotation for inner in data.inner_types)):
            if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
                yield from _struct_tree(msgspec.inspect.type_info(kind))


def _struct_tree(info: msgspec.inspect.Type) -> Iterator[tuple[str, type[msgspec.Struct]]]:
    if isinstance(info, msgspec.inspect.StructType):
        yield info.cls.__name__, info.cls
        for field in info.fields:
            yield from _struct_tree(field.type)
    elif isinstance(info, msgspec.inspect.UnionType):
        for option in info.types:
            yield from _struct_tree(option)
    elif isinstance(info, msgspec.inspect.ListType):
        yield from _struct_tree(info.item_type)
    elif isinstance(info, msgspec.inspect.DictType):
        yield from _struct_tree(info.value_type)
    elif isinstance(info, msgspec.inspect.Metadata):
        yield from _struct_tree(info.type)


def _lower_bound(info: msgspec.inspect.Type) -> float | None:
    """A number field's `ge` (Litestar leaves out a bound of 0 on optional fields)."""
    if isinstance(info, msgspec.inspect.IntType | msgspec.inspect.FloatType):
        return info.ge
    if isinstance(info, msgspec.inspect.UnionType):
        bounds = [_lower_bound(option) for option in info.types]
        return next((bound for bound in bounds if bound is not None), None)
    if isinstance(info, msgspec.inspect.Metadata):
        return _lower_bound(info.type)
    return None


def _restore_lower_bounds(schemas: dict[str, Any], name: str, struct: type[msgspec.Struct]) -> None:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    properties = schemas.get(name, {}).get("properties", {})
    for field in info.fields:
        bound = _lower_bound(field.type)
        if bound is not None and field.encode_name in properties:
            properties[field.encode_name].setdefault("minimum", bound)


def _refine_bodies(schemas: dict[str, Any], settings: Settings, agents: list[str]) -> None:
    update = schemas.get("UpdateConversation")
    if update is not None:
        update["minProperties"] = 1
    for name in ("Registration", "NewUser"):
        password = schemas.get(name, {}).get("properties", {}).get("password")
        if password is not None:
            for option in _options(password):
                if option.get("type") == "string":
                    option["minLength"] = settings.min_password_length
    agent = schemas.get("CreateConversation", {}).get("properties", {}).get("agent")
    if agent is not None:
        _name_agents(agent, agents)


def _refine_ag_ui(document: dict[str, Any], agents: list[str]) -> None:
    """What Litestar drops of AG-UI's input (http/agui.py): a user message's text is not
    blank, its parts are one at least; `agent` is one of this server's agents."""
    content = (
        document["components"]["schemas"]
        .get("UserMessage", {})
        .get("properties", {})
        .get("content")
    )
    if content is not None:
        for option in _options(content):
            if option.get("type") == "string":
                option["pattern"] = NOT_BLANK
            elif option.get("type") == "array":
                option["minItems"] = 1
    for parameter in document["paths"].get("/v1/ag-ui", {}).get("post", {}).get("parameters", []):
        if parameter["name"] == "agent":
            _name_agents(parameter["schema"], agents)


def _name_agents(schema: dict[str, Any], agents: list[str]) -> None:
    """An agent as a new conversation names it: a system agent's name, or the id of an
    agent the caller may use (`GET /v1/agents`); in place of the schema's string."""
    for option in _options(schema):
        if option.get("type") == "string":
            option.clear()
            option["anyOf"] = [
                {"type": "string", "enum": agents, "description": "A system agent's name"},
                {"type": "string", "format": "uuid", "description": "An agent's id"},
            ]


def _options(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return cast(list[dict[str, Any]], schema.get("oneOf") or schema.get("anyOf") or [schema])


def _refine_operation(
    handler: HTTPRouteHandler | None, path: str, method: str, operation: dict[str, Any]
) -> None:
    parameters = operation.get("parameters", [])
    bounds = _lower_bounds(handler) if handler is not None else {}
    for parameter in parameters:
        if parameter.get("in") in ("query", "header") and not parameter.get("required"):
            parameter["schema"] = _not_null(parameter["schema"])
        # Litestar drops a bound of 0 (`ge=0`): put it back.
        if parameter["name"] in bounds:
            parameter["schema"].setdefault("minimum", bounds[parameter["name"]])
    _security(handler, operation)
    statuses = _error_statuses(handler, path, method, operation)
    responses = operation.setdefault("responses", {})
    error = {
        JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}},
    }
    for status in list(responses):
        if status.isdigit() and int(status) >= 400 and int(status) not in statuses:
            del responses[status]
    for status in sorted(statuses):
        responses.setdefault(
            str(status), {"description": ERROR_DESCRIPTIONS[status], "content": error}
        )


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`oneOf: [X, null]` with constraints beside it -> X with them."""
    options = schema.get("oneOf")
    if not options:
        return schema
    kept = [option for option in options if option.get("type") != "null"]
    if len(kept) != 1:
        return {**schema, "oneOf": kept}
    merged = {key: value for key, value in schema.items() if key != "oneOf"}
    return {**kept[0], **merged}


def _lower_bounds(handler: HTTPRouteHandler) -> dict[str, float]:
    bounds = {}
    for field in handler.parsed_fn_signature.parameters.values():
        kwarg = field.kwarg_definition
        if isinstance(kwarg, ParameterKwarg) and kwarg.ge is not None:
            bounds[kwarg.name or field.name] = kwarg.ge
    return bounds


def _security(handler: HTTPRouteHandler | None, operation: dict[str, Any]) -> None:
    if handler is not None and not handler.opt.get("exclude_from_auth"):
        operation["security"] = [{name: []} for name in SECURITY_SCHEMES]


def _error_statuses(
    handler: HTTPRouteHandler | None, path: str, method: str, operation: dict[str, Any]
) -> set[int]:
    public = bool(handler and handler.opt.get("exclude_from_auth"))
    health = path.startswith("/health")
    statuses = {431}
    if not health:
        statuses |= {429}
    if path != "/health":
        statuses |= {503}
    if not public:
        statuses |= {401}
        if handler is not None and handler.resolve_guards():
            statuses |= {403}
    parameters = operation.get("parameters", [])
    if parameters or "requestBody" in operation:
        statuses |= {400}
    if "requestBody" in operation:
        statuses |= {413}
    if any(p.get("in") == "path" for p in parameters):
        statuses |= {404}
    if any(p.get("name") == "min_position" for p in parameters):
        statuses |= {MIN_POSITION_CONFLICT}
    if path.startswith("/v1/conversations/{conversation_id}"):
        statuses |= {404}
    statuses |= set(EXTRA_STATUSES.get((method, path), ()))
    return statuses


def _handler_for(app: Litestar, path: str, method: str) -> HTTPRouteHandler | None:
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path_format == path:
            for handler in route.route_handlers:
                if method in handler.http_methods:
                    return handler
    return None


def _json_text(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "string", "contentMediaType": JSON, "contentSchema": schema}


SSE_EVENT: dict[str, Any] = {
    "description": (
        "One Server-Sent Event: `id:` the event's position (its global position on "
        "/v1/stream), `event:` its type, `data:` the event as JSON; or, before the server "
        "ends a stream it cannot go on with, `event: error` with an error body (resume "
        "with `Last-Event-ID`). Idle streams carry `: heartbeat` comments."
    ),
    "oneOf": [
        {
            "type": "object",
            "required": ["id", "event", "data"],
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {"type": "string", "pattern": "^[A-Z][A-Za-z]*$"},
                "data": _json_text({"$ref": "#/components/schemas/EventEnvelope"}),
            },
        },
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": "error"},
                "data": _json_text(
                    {
                        "type": "object",
                        "required": ["error", "message"],
                        "properties": {
                            "error": {"type": "string"},
                            "message": {"type": "string"},
                        },
                    }
                ),
            },
        },
    ],
}


AG_UI_EVENT: dict[str, Any] = {
    "description": (
        "One AG-UI event (protocol 1.0) as a Server-Sent Event: `id:` its cursor "
        "(`<position>` or `<position>.<index>`, docs/ag-ui.md), `data:` the event as JSON, "
        "its `metadata.threadlog` holding `position` and `cursor`. Idle streams carry "
        "`: heartbeat` comments."
    ),
    "type": "object",
    "required": ["id", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$"},
        "data": _json_text(
            {
                "type": "object",
                "required": ["type", "metadata"],
                "properties": {
                    "type": {"type": "string", "pattern": "^[A-Z_]+$"},
                    "metadata": {
                        "type": "object",
                        "required": ["threadlog"],
                        "properties": {"threadlog": {"type": "object"}},
                    },
                },
            }
        ),
    },
}


def _content_types(paths: dict[str, Any]) -> None:
    sse = {"schema": SSE_EVENT}
    agui = paths["/v1/ag-ui"]["post"]["responses"]["200"]
    agui["content"] = {SSE: {"schema": AG_UI_EVENT}}
    events = paths["/v1/conversations/{conversation_id}/events"]["get"]["responses"]["200"]
    events["content"][SSE] = sse
    audit = paths["/v1/audit/events"]["get"]["responses"]["200"]
    audit["content"][NDJSON] = {
        "schema": {"type": "string", "description": "One EventEnvelope (JSON) per line"}
    }
    firehose = paths["/v1/stream"]["get"]["responses"]["200"]
    firehose["content"] = {SSE: sse}
    post = paths["/v1/conversations/{conversation_id}/messages"]["post"]["responses"]
    accepted = post["202"]["content"][JSON]["schema"]
    result = {"$ref": "#/components/schemas/RunResult"}
    post["202"]["content"][JSON]["schema"] = {"oneOf": [accepted, result]}
    post["202"]["description"] = (
        "The message is accepted (MessageAccepted); with `wait=true`, the run had not "
        "ended in time (a RunResult with status `running`)"
    )
    post["200"] = {
        "description": "`wait=true`: the run's result; `Accept: text/event-stream`: its events",
        "content": {JSON: {"schema": result}, SSE: sse},
    }
