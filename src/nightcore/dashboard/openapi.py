"""The OpenAPI 3.1 description of the live console's JSON API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": False, "content": {"application/json": {"schema": schema}}}


_TENANT_PARAM = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
_MUTATION_ERRORS = {
    "400": _error("malformed request"),
    "401": _error("missing, invalid or expired bearer token"),
    "403": _error("cross-origin request refused"),
    "409": _error("conflicts with the current state"),
    "429": _error("rate limit of this token exceeded (see Retry-After)"),
}


def schema(version: str) -> dict[str, Any]:
    obj: dict[str, Any] = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Night Core live console API",
            "version": version,
            "description": (
                "Read-only without credentials. Mutations need `Authorization: Bearer <token>` "
                "(`nightcore serve token create`); cookies are never used. A POST whose Origin "
                "header is present and not this server's own origin is refused. Errors are "
                "`{code, error}`."
            ),
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "error"],
                    "properties": {"code": {"type": "string"}, "error": {"type": "string"}},
                },
                "Run": {
                    "type": "object",
                    "properties": {
                        "run_id": {"type": "string"},
                        "tenant": {"type": "string"},
                        "code": {"type": "string"},
                        "exit_code": {"type": ["integer", "null"]},
                        "fuel_used": {"type": ["integer", "null"]},
                        "wall_ms": {"type": ["number", "null"]},
                        "memory_bytes": {"type": ["integer", "null"]},
                        "output_bytes": {"type": ["integer", "null"]},
                        "ts": {"type": "string"},
                        "audit_seq": {"type": ["integer", "null"]},
                    },
                },
                "Tenant": {
                    "type": "object",
                    "properties": {
                        "tenant": {"type": "string"},
                        "present": {"type": "boolean"},
                        "verdict": {"type": "string"},
                        "verdict_reason": {"type": "string"},
                        "key_id": {"type": "string"},
                        "module_sha256": {"type": "string"},
                        "runs": {"type": "integer"},
                        "last_run": {
                            "oneOf": [{"$ref": "#/components/schemas/Run"}, {"type": "null"}]
                        },
                        "limits": {"type": "object"},
                        "cordoned": {"type": "boolean"},
                        "attention": {"type": "boolean"},
                    },
                },
                "Verify": {
                    "type": "object",
                    "properties": {
                        "mode": {"type": "string"},
                        "ok": {"type": ["boolean", "null"]},
                        "entries": {"type": "integer"},
                        "code": {"type": ["string", "null"]},
                        "error": {"type": ["string", "null"]},
                        "seq": {"type": ["integer", "null"]},
                        "checks": {"type": "array", "items": {"type": "string"}},
                        "warnings": {"type": "array", "items": {"type": "string"}},
                        "at": {"type": "string"},
                    },
                },
                "Checkpoint": {
                    "type": "object",
                    "properties": {
                        "origin": {"type": "string"},
                        "size": {"type": "integer"},
                        "root": {"type": "string"},
                        "key_name": {"type": "string"},
                        "note": {"type": "string"},
                    },
                },
            },
        },
        "paths": {
            "/api/tenants": {
                "get": {
                    "summary": "Every tenant with its verdict, last run and limits (paginated)",
                    "parameters": [
                        {
                            "name": "offset",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 1000,
                                "default": 100,
                            },
                        },
                        {
                            "name": "attention",
                            "in": "query",
                            "description": "only tenants that are denied, failing or cordoned",
                            "schema": {"type": "boolean"},
                        },
                    ],
                    "responses": {
                        "200": _json(
                            "a page of tenants",
                            {
                                "type": "object",
                                "properties": {
                                    "total": {"type": "integer"},
                                    "offset": {"type": "integer"},
                                    "limit": {"type": "integer"},
                                    "tenants": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Tenant"},
                                    },
                                },
                            },
                        ),
                        "400": _error("malformed parameter"),
                    },
                }
            },
            "/api/runs": {
                "get": {
                    "summary": "Most recent runs, newest first (the SQLite run index)",
                    "parameters": [
                        {
                            "name": "tenant",
                            "in": "query",
                            "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 1000,
                                "default": 50,
                            },
                        },
                    ],
                    "responses": {
                        "200": _json(
                            "runs",
                            {
                                "type": "object",
                                "properties": {
                                    "runs": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Run"},
                                    }
                                },
                            },
                        ),
                        "400": _error("malformed parameter"),
                    },
                }
            },
            "/api/audit/verify": {
                "get": {
                    "summary": "Full verification of the audit log (as `nightcore audit verify`)",
                    "description": "Cached while the log does not grow (and for 10 s if it does).",
                    "responses": {
                        "200": _json("the result", {"$ref": "#/components/schemas/Verify"})
                    },
                }
            },
            "/api/checkpoint": {
                "get": {
                    "summary": "The latest signed checkpoint (null if none)",
                    "responses": {
                        "200": _json(
                            "the checkpoint",
                            {
                                "type": "object",
                                "properties": {
                                    "checkpoint": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Checkpoint"},
                                            {"type": "null"},
                                        ]
                                    },
                                    "entries": {"type": "integer"},
                                },
                            },
                        ),
                        "409": _error("the checkpoint could not be verified"),
                    },
                },
                "post": {
                    "summary": "Sign a checkpoint of the whole log now",
                    "security": _SECURED,
                    "responses": {"200": _json("the new checkpoint", obj), **_MUTATION_ERRORS},
                },
            },
            "/api/tenants/{tenant}/cordon": {
                "post": {
                    "summary": "Cordon a tenant (audited with the token id as actor)",
                    "security": _SECURED,
                    "parameters": [_TENANT_PARAM],
                    "requestBody": _body(
                        {
                            "type": "object",
                            "required": ["reason"],
                            "properties": {"reason": {"type": "string", "maxLength": 512}},
                        }
                    ),
                    "responses": {"200": _json("cordoned", obj), **_MUTATION_ERRORS},
                }
            },
            "/api/tenants/{tenant}/uncordon": {
                "post": {
                    "summary": "Lift a cordon (audited with the token id as actor)",
                    "security": _SECURED,
                    "parameters": [_TENANT_PARAM],
                    "requestBody": _body(
                        {"type": "object", "properties": {"reason": {"type": "string"}}}
                    ),
                    "responses": {"200": _json("uncordoned", obj), **_MUTATION_ERRORS},
                }
            },
            "/api/run": {
                "post": {
                    "summary": "Verify, admit and run tenants (all, or the ones named)",
                    "security": _SECURED,
                    "requestBody": _body(
                        {
                            "type": "object",
                            "properties": {
                                "tenants": {
                                    "type": "array",
                                    "items": {"type": "string"},
                                    "maxItems": 1000,
                                }
                            },
                        }
                    ),
                    "responses": {
                        "200": _json(
                            "one result per tenant",
                            {
                                "type": "object",
                                "properties": {
                                    "ok": {"type": "boolean"},
                                    "runs": {"type": "array", "items": obj},
                                },
                            },
                        ),
                        **_MUTATION_ERRORS,
                    },
                }
            },
        },
    }
