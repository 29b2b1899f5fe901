"""The OpenAPI 3.1 description of the booking API, served at ``/openapi.json``.

Written out rather than generated, so that every error shape and status code
the API really answers is described; the test suite fuzzes the API from this
document (schemathesis) and checks every answer against it.
"""

from __future__ import annotations

import functools
from typing import Any

from medbook.booking import catalog
from medbook.booking.validation import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SERVICES,
    MAX_USER_ID_LENGTH,
)
from medbook.contracts import BookingStatus, Gender

TRACE_ID = {
    "type": "string",
    "pattern": "^[0-9a-f]{32}$",
    "description": "W3C trace id of the booking's trace.",
}
TIMESTAMP = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str, validation: bool = False) -> dict[str, Any]:
    return _json(_ref("ValidationError" if validation else "Error"), description)


_UNAUTHORIZED = _error("Authentication is on and the bearer token is missing or wrong.")
_UNAVAILABLE = {
    **_error("The database cannot be reached; retry later."),
    "headers": {"Retry-After": {"schema": {"type": "string"}}},
}
_BAD_ID = _error("The id is not a UUID.")
_ID_PARAM = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "The booking id (a UUID).",
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    genders = [g.value for g in Gender]
    service_names = [item.name for item in catalog.CATALOG]
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["code", "message", "error", "timestamp"],
            "properties": {
                "code": {"type": "integer"},
                "message": {"type": "string"},
                "error": {"type": "string"},
                "timestamp": TIMESTAMP,
                "path": {"type": "string"},
            },
        },
        "ValidationError": {
            "type": "object",
            "required": ["code", "message", "error", "timestamp"],
            "properties": {
                "code": {"type": "integer", "const": 400},
                "message": {"type": "string"},
                "error": {
                    "oneOf": [
                        {"type": "array", "items": {"type": "string"}, "minItems": 1},
                        {"type": "string"},
                    ],
                    "description": "One message per problem when message is 'Validation failed'.",
                },
                "timestamp": TIMESTAMP,
                "path": {"type": "string"},
            },
        },
        "CatalogItem": {
            "type": "object",
            "required": ["name", "price", "gender"],
            "properties": {
                "name": {"type": "string"},
                "price": {"type": "integer", "minimum": 0},
                "gender": {"type": "string", "enum": [*genders, "All"]},
            },
        },
        "CreateBooking": {
            "type": "object",
            "additionalProperties": False,
            "required": ["userName", "gender", "dob", "serviceNames"],
            "properties": {
                "userName": {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH},
                "gender": {"type": "string", "enum": genders},
                "dob": {
                    "type": "string",
                    "format": "date",
                    "description": "YYYY-MM-DD, a real past date.",
                },
                "serviceNames": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_SERVICES,
                    "uniqueItems": True,
                    "items": {"type": "string", "enum": service_names},
                },
                "userId": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_USER_ID_LENGTH,
                    "description": "Optional; when absent, a stable UUIDv5 derived from userName.",
                },
            },
        },
        "BookingAccepted": {
            "type": "object",
            "required": ["message", "bookingId", "traceId", "status"],
            "properties": {
                "message": {"type": "string"},
                "bookingId": {"type": "string", "format": "uuid"},
                "traceId": TRACE_ID,
                "status": {"type": "string", "enum": [s.value for s in BookingStatus]},
            },
        },
        "Booking": {
            "type": "object",
            "required": [
                "id",
                "userId",
                "userName",
                "gender",
                "dob",
                "services",
                "basePrice",
                "finalPrice",
                "status",
                "failReason",
                "history",
                "traceId",
                "createdAt",
                "updatedAt",
            ],
            "properties": {
                "id": {"type": "string", "format": "uuid"},
                "userId": {"type": "string"},
                "userName": {"type": "string"},
                "gender": {"type": "string", "enum": genders},
                "dob": {"type": "string", "format": "date"},
                "services": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "price"],
                        "properties": {"name": {"type": "string"}, "price": {"type": "integer"}},
                    },
                },
                "basePrice": {"type": "integer"},
                "finalPrice": {"type": ["integer", "null"]},
                "status": {"type": "string", "enum": [s.value for s in BookingStatus]},
                "failReason": {"type": ["string", "null"]},
                "history": {"type": "array", "items": {"type": "string"}},
                "traceId": TRACE_ID,
                "createdAt": TIMESTAMP,
                "updatedAt": TIMESTAMP,
                "completedAt": {"type": ["string", "null"], "format": "date-time"},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "checks": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "enum": ["ok", "down"]},
                },
            },
        },
    }
    paths: dict[str, Any] = {
        "/booking/services": {
            "get": {
                "operationId": "listServices",
                "summary": "The service catalog, for one gender or for all.",
                "parameters": [
                    {
                        "name": "gender",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": genders},
                    }
                ],
                "responses": {
                    "200": _json(
                        {"type": "array", "items": _ref("CatalogItem")}, "The services offered."
                    ),
                    "400": _error("Unknown gender.", validation=True),
                    "401": _UNAUTHORIZED,
                },
            }
        },
        "/booking": {
            "post": {
                "operationId": "createBooking",
                "summary": "Create a booking; it starts PENDING while the discount saga runs.",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH,
                            "pattern": "^[!-~]+$",
                        },
                        "description": "A retry with the same key and body gets the same booking.",
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("CreateBooking")}},
                },
                "responses": {
                    "201": {
                        **_json(
                            _ref("BookingAccepted"),
                            "Accepted (or replayed for a known Idempotency-Key).",
                        ),
                        "headers": {
                            "Location": {"schema": {"type": "string"}},
                            "Idempotent-Replayed": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _error(
                        "Invalid body, unknown service, or service not offered to that gender.",
                        validation=True,
                    ),
                    "401": _UNAUTHORIZED,
                    "413": _error("The body is over 64 KiB."),
                    "415": _error("The body is not JSON."),
                    "422": _error(
                        "The Idempotency-Key was used with a different body, or the database "
                        "refuses a value of the request."
                    ),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/booking/{id}": {
            "get": {
                "operationId": "getBooking",
                "summary": "A booking with its status, prices and history.",
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": _json(_ref("Booking"), "The booking."),
                    "400": _BAD_ID,
                    "401": _UNAUTHORIZED,
                    "404": _error("No booking with that id."),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/booking/{id}/cancel": {
            "post": {
                "operationId": "cancelBooking",
                "summary": "Cancel a PENDING or CONFIRMED booking; its discount unit goes back.",
                "parameters": [_ID_PARAM],
                "responses": {
                    "200": _json(
                        _ref("Booking"), "The cancelled booking (cancelling twice is harmless)."
                    ),
                    "400": _BAD_ID,
                    "401": _UNAUTHORIZED,
                    "404": _error("No booking with that id."),
                    "409": _error("The booking is REJECTED and cannot be cancelled."),
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "Liveness: the process answers.",
                "security": [],
                "responses": {"200": _json(_ref("Health"), "Alive.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "ready",
                "summary": "Readiness: the database and the broker are reachable.",
                "security": [],
                "parameters": [
                    {
                        "name": "check",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["database", "broker"]},
                        "description": "Check only this dependency (repeatable); default both.",
                    }
                ],
                "responses": {
                    "200": _json(_ref("Readiness"), "Ready."),
                    "400": _error("Unknown check name."),
                    "503": _json(_ref("Readiness"), "A dependency is down."),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": _json({"type": "object"}, "The OpenAPI document."),
                    "401": _UNAUTHORIZED,
                },
            }
        },
    }
    # What the server itself may answer to any request (http_protocol.py, middleware.py).
    for operations in paths.values():
        for operation in operations.values():
            responses = operation["responses"]
            responses.setdefault("414", _error("The request target is over 8 KiB."))
            responses.setdefault("431", _error("The request line and headers are over 16 KiB."))
            responses.setdefault("500", _error("A bug: logged, and the connection stays usable."))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "medbook booking API",
            "version": "1.0.0",
            "description": "Bookings whose discount a saga with the discount service decides. "
            "Every error is JSON: {code, message, error, timestamp, path}.",
        },
        "servers": [{"url": "/"}],
        "security": [{}, {"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Only when the service runs with MEDBOOK_API_TOKEN set.",
                }
            },
        },
    }
