"""Checks a real response against app/openapi.json: its status, content type, headers and body must be documented."""

from __future__ import annotations

import json
import re

from jsonschema import Draft202012Validator

from app.operations import OPENAPI_DOCUMENT


def documented_response(path: str, method: str, status: int) -> dict:
    operation = OPENAPI_DOCUMENT["paths"][path][method.lower()]
    assert str(status) in operation["responses"], f"{method} {path} answered {status}, which is not documented"
    return _resolve(operation["responses"][str(status)])


def assert_conforms(path: str, method: str, status: int, headers, body: bytes) -> None:
    """`headers` is any mapping with case-insensitive keys (requests' or werkzeug's)."""
    response = documented_response(path, method, status)
    content_type = headers.get("Content-Type", "").split(";")[0].strip()
    assert content_type in response.get("content", {}), f"{method} {path} {status}: undocumented {content_type}"
    for header in response.get("headers", {}):
        assert header in headers, f"{method} {path} {status}: header {header} missing"
    if content_type == "application/json":
        schema = response["content"][content_type]["schema"]
        # The whole document is the root resource, so "#/components/..." resolves; its own top-level keys
        # (openapi, info, paths, components) are no JSON Schema keywords and are ignored.
        validator = Draft202012Validator({**OPENAPI_DOCUMENT, **schema})
        errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
                  for error in validator.iter_errors(json.loads(body))]
        assert not errors, f"{method} {path} {status}: {errors}"


def documented_path(path: str) -> str:
    """The document's template of a concrete path: /models/resnet18/predict -> /models/{name}/predict."""
    for template in OPENAPI_DOCUMENT["paths"]:
        if re.fullmatch(re.sub(r"\\\{\w+\\\}", "[^/]+", re.escape(template)), path):
            return template
    raise AssertionError(f"{path} is not in the document")


def _resolve(item: dict) -> dict:
    while "$ref" in item:
        node = OPENAPI_DOCUMENT
        for part in item["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        item = node
    return item
