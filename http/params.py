"""Parameters whose OpenAPI schema states exactly what the server accepts.

A time (`from`, `to`) is RFC 3339: what the schema's `format` says (a `date-time`, or for
the usage report also a `date`), and nothing else that `datetime.fromisoformat` would
take (no naive times, no week dates, no space for the `T`).
"""

import re
from datetime import UTC, date, datetime, time
from typing import Any

from litestar.openapi.spec import OpenAPIFormat, OpenAPIType, Schema

from threadlog.http.errors import BadRequest

_DATE = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
_DATE_TIME = _DATE + r"[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
RFC3339_DATE = re.compile(_DATE)
RFC3339_DATE_TIME = re.compile(_DATE_TIME)

DATE_TIME_SCHEMA: dict[str, Any] = {"format": OpenAPIFormat.DATE_TIME}
DATE_OR_DATE_TIME_SCHEMA: dict[str, Any] = {
    "any_of": [
        Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE_TIME),
        Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.DATE),
    ]
}


def parse_instant(name: str, value: str, *, dates: bool = False) -> datetime:
    """An RFC 3339 date-time (or, with `dates`, a full date: its midnight UTC), in UTC."""
    try:
        if RFC3339_DATE_TIME.fullmatch(value):
            # Python has no leap second; RFC 3339's :60 is the last instant of its minute.
            moment = datetime.fromisoformat(value.upper().replace(":60", ":59.999999", 1))
            return moment.astimezone(UTC)
        if dates and RFC3339_DATE.fullmatch(value):
            return datetime.combine(date.fromisoformat(value), time(), UTC)
    except (ValueError, OverflowError):
        pass
    example = "2026-11-01 or 2026-11-01T12:00:00Z" if dates else "2026-11-01T12:00:00Z"
    kind = "an RFC 3339 date or date-time" if dates else "an RFC 3339 date-time"
    raise BadRequest(f"{name} must be {kind} (e.g. {example})", extra={"field": name})
