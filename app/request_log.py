"""Per request: its request id (X-Request-ID, accepted and echoed), one structured log line and its metrics.

Two ids, two names: the request id is the HTTP request's (the client's X-Request-ID, or one made up); the
job id is the one a classification travels under through Redis, the `id` of the queue message, of the
worker's answer and of the /predict answer. The line is key=value, like the worker's batch lines, e.g.
  method=POST path=/predict status=200 duration_ms=41.2 request_id=3f2a... job_id=3f2a... batch_size=1 ...
The job id is the request id when the API made that up; a client's own X-Request-ID is only logged and
echoed, since two clients may send the same one and their answers must never cross.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import MethodNotAllowed

from app import metrics
from serving.config import LOG_FORMAT

log = logging.getLogger("api")

REQUEST_ID_HEADER = "X-Request-ID"
_ACCEPTED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")  # printable, no spaces: safe in a log line


def install(app: Flask, log_level: str) -> None:
    _configure_logging(log_level)
    app.before_request(_start)
    app.after_request(_finish)


def log_fields(**fields) -> None:
    """Add fields to this request's log line."""
    g.log_fields.update(fields)


def new_job_ids(count: int) -> list[str]:
    """The ids a request's images travel under through Redis: unique; the first is the request id itself when the
    API made that up."""
    first = g.request_id if g.generated_request_id else uuid.uuid4().hex
    return [first, *(uuid.uuid4().hex for _ in range(count - 1))][:count]


def _start() -> None:
    g.started = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.generated_request_id = not _ACCEPTED_REQUEST_ID.fullmatch(given)
    g.request_id = uuid.uuid4().hex if g.generated_request_id else given
    g.log_fields = {}


def _finish(response: Response) -> Response:
    seconds = time.perf_counter() - g.started
    response.headers[REQUEST_ID_HEADER] = g.request_id
    metrics.observe_request(_route(), request.method, response.status_code, seconds)
    fields = {"method": request.method, "path": request.path, "status": response.status_code,
              "duration_ms": round(seconds * 1000, 1), "request_id": g.request_id, **g.log_fields}
    log.info("%s", " ".join(f"{key}={_value(value)}" for key, value in fields.items()))
    return response


def _route() -> str:
    """The route a request went to, also when its method was wrong (405); `unmatched` for a path no route has,
    so that no client can make a label per path it invents."""
    if request.url_rule:
        return request.url_rule.rule
    refused = request.routing_exception
    if isinstance(refused, MethodNotAllowed) and refused.valid_methods:
        adapter = current_app.url_map.bind_to_environ(request.environ)
        return adapter.match(method=refused.valid_methods[0], return_rule=True)[0].rule
    return "unmatched"


def _value(value) -> str:
    text = str(value)
    return text if text and not re.search(r'[\s"=]', text) else json.dumps(text)


def _configure_logging(level: str) -> None:
    """The API's lines on stderr in the format the worker uses too; once per process (tests build many apps)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        log.addHandler(handler)
    log.setLevel(level)
