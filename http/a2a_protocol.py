"""A2A 1.0 on the wire: the JSON-RPC 2.0 envelope, the objects threadlog sends and
reads (ProtoJSON: camelCase names, enums by name), and the protocol's error codes.

Written with msgspec, as the rest of the wire schemas: the `a2a-sdk` package (its
protobuf types) is a test dependency only, the client the tests drive threadlog with.
Only what threadlog uses is modelled; a request's other fields are ignored.
"""

from typing import Any, Literal, TypeVar

import msgspec

PROTOCOL_VERSION = "1.0"
VERSION_HEADER = "A2A-Version"
CARD_PATH = "/.well-known/agent-card.json"

# JSON-RPC 2.0 and A2A error codes (A2A 1.0, "JSON-RPC error codes").
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
TASK_NOT_FOUND = -32001
TASK_NOT_CANCELABLE = -32002
UNSUPPORTED_OPERATION = -32004
VERSION_NOT_SUPPORTED = -32009

TaskState = Literal[
    "TASK_STATE_SUBMITTED",
    "TASK_STATE_WORKING",
    "TASK_STATE_COMPLETED",
    "TASK_STATE_FAILED",
    "TASK_STATE_CANCELED",
]
TERMINAL_STATES = frozenset({"TASK_STATE_COMPLETED", "TASK_STATE_FAILED", "TASK_STATE_CANCELED"})
Role = Literal["ROLE_USER", "ROLE_AGENT"]


class RpcError(Exception):
    """A JSON-RPC error answer: `code`, `message` and optional `data`."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


class _Wire(msgspec.Struct, kw_only=True, rename="camel", omit_defaults=True):
    pass


class Part(_Wire):
    text: str | None = None
    data: Any = None
    media_type: str | None = None
    metadata: dict[str, Any] | None = None


class Message(_Wire):
    message_id: str
    role: Role
    parts: list[Part]
    context_id: str | None = None
    task_id: str | None = None
    metadata: dict[str, Any] | None = None


class TaskStatus(_Wire):
    state: TaskState
    message: Message | None = None
    timestamp: str | None = None


class Artifact(_Wire):
    artifact_id: str
    parts: list[Part]
    name: str | None = None
    metadata: dict[str, Any] | None = None


class Task(_Wire):
    id: str
    context_id: str
    status: TaskStatus
    artifacts: list[Artifact] = msgspec.field(default_factory=list)
    history: list[Message] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] | None = None


class TaskStatusUpdateEvent(_Wire):
    task_id: str
    context_id: str
    status: TaskStatus
    metadata: dict[str, Any] | None = None


class TaskArtifactUpdateEvent(_Wire):
    task_id: str
    context_id: str
    artifact: Artifact
    append: bool = False
    last_chunk: bool = False
    metadata: dict[str, Any] | None = None


class StreamResponse(_Wire):
    """One item of a stream: exactly one field set."""

    task: Task | None = None
    status_update: TaskStatusUpdateEvent | None = None
    artifact_update: TaskArtifactUpdateEvent | None = None


# --- requests ------------------------------------------------------------------------------


class InPart(_Wire):
    text: str | None = None
    data: Any = None
    url: str | None = None
    raw: str | None = None


class InMessage(_Wire):
    message_id: str
    role: str = "ROLE_USER"
    parts: list[InPart] = msgspec.field(default_factory=list)
    context_id: str | None = None
    task_id: str | None = None


class SendConfiguration(_Wire):
    history_length: int | None = None
    return_immediately: bool = False


class SendMessageParams(_Wire):
    message: InMessage
    configuration: SendConfiguration | None = None
    metadata: dict[str, Any] | None = None


class TaskIdParams(_Wire):
    id: str
    history_length: int | None = None


class RpcRequest(msgspec.Struct, kw_only=True):
    jsonrpc: str
    method: str
    id: str | int | None = None
    params: Any = None


# --- the agent card ------------------------------------------------------------------------


class AgentInterface(_Wire):
    url: str
    protocol_binding: str
    protocol_version: str


class AgentCapabilities(_Wire):
    streaming: bool
    push_notifications: bool = False


class AgentSkill(_Wire):
    id: str
    name: str
    description: str
    tags: list[str]
    examples: list[str] | None = None


class HttpAuthScheme(_Wire):
    scheme: str
    description: str
    bearer_format: str | None = None


class ApiKeyScheme(_Wire):
    location: str
    name: str
    description: str


class SecurityScheme(_Wire):
    http_auth_security_scheme: HttpAuthScheme | None = None
    api_key_security_scheme: ApiKeyScheme | None = None


class SchemeScopes(_Wire):
    scopes: list[str] = msgspec.field(default_factory=list, name="list")


class SecurityRequirement(_Wire):
    schemes: dict[str, SchemeScopes]


class AgentProvider(_Wire):
    organization: str
    url: str


class AgentCard(_Wire):
    name: str
    description: str
    version: str
    supported_interfaces: list[AgentInterface]
    capabilities: AgentCapabilities
    security_schemes: dict[str, SecurityScheme]
    security_requirements: list[SecurityRequirement]
    default_input_modes: list[str]
    default_output_modes: list[str]
    skills: list[AgentSkill]
    provider: AgentProvider | None = None
    documentation_url: str | None = None


# --- encoding ------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder()


def result_body(request_id: str | int | None, result: Any) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "result": result})


def error_body(request_id: str | int | None, error: RpcError) -> bytes:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.data is not None:
        body["data"] = error.data
    return _encoder.encode({"jsonrpc": "2.0", "id": request_id, "error": body})


def parse_request(body: bytes) -> tuple[str | int | None, RpcRequest]:
    """The request and its id; RpcError (with the id where one was readable) otherwise."""
    try:
        raw = _request_decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise RpcError(PARSE_ERROR, "the body is not JSON") from None
    request_id = raw.get("id") if isinstance(raw, dict) else None
    if not isinstance(request_id, str | int) or isinstance(request_id, bool):
        request_id = None
    if isinstance(raw, list):
        raise RpcError(INVALID_REQUEST, "batch requests are not supported")
    try:
        request = msgspec.convert(raw, RpcRequest)
    except msgspec.ValidationError as error:
        raise _Identified(
            request_id, INVALID_REQUEST, f"not a JSON-RPC 2.0 request: {error}"
        ) from None
    if request.jsonrpc != "2.0":
        raise _Identified(request_id, INVALID_REQUEST, 'jsonrpc must be "2.0"')
    return request_id, request


class _Identified(RpcError):
    """An error raised before the request was parsed, with the id it had."""

    def __init__(self, request_id: str | int | None, code: int, message: str) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def request_id_of(error: RpcError) -> str | int | None:
    return error.request_id if isinstance(error, _Identified) else None


T = TypeVar("T")


def params_as(params: Any, kind: type[T]) -> T:
    """The method's params as `kind`; invalid params otherwise."""
    if not isinstance(params, dict):
        raise RpcError(INVALID_PARAMS, "params must be an object")
    try:
        return msgspec.convert(params, kind)
    except msgspec.ValidationError as error:
        raise RpcError(INVALID_PARAMS, f"invalid params: {error}") from None


def encode(value: Any) -> bytes:
    return _encoder.encode(value)
