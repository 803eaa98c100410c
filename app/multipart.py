"""multipart/form-data bodies (RFC 7578) parsed whole, from the body read once.

werkzeug's form parser streams a body through its decoder in 64 KB pieces and spools every file over 500 KB
to a temporary file, which the route then reads back into memory: 1.1-3.0 ms of API CPU per uploaded photo,
where finding the delimiters in the body with `bytes.find` costs 0.1-0.2 ms more than reading it
(docs/performance.md, "Levers measured"). The body is already capped at MAX_UPLOAD_MB before it is read, and
each upload is held in memory right after for decoding anyway.

Lines end in CRLF, as RFC 2046 requires and every HTTP client sends; a body that does not parse is a 400
`invalid_multipart` that says where it went wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header

from app.errors import ApiError

_CRLF = b"\r\n"
_HEADERS_END = b"\r\n\r\n"
_FIELD_CHARSETS = {"ascii", "us-ascii", "utf-8", "iso-8859-1"}
MAX_PART_HEADER_BYTES = 8192  # a part's headers are a name, a file name and a type: far below this


@dataclass(frozen=True)
class Form:
    """A form's parts in the order sent: files (parts with a file name) and plain fields, each by field name."""

    files: tuple[tuple[str, bytes], ...]
    fields: tuple[tuple[str, str], ...]

    def files_named(self, *names: str) -> list[bytes]:
        """The contents of the files sent in these fields, field by field in the order of `names`."""
        return [content for name in names for field, content in self.files if field == name]

    def field(self, name: str, default: str | None = None) -> str | None:
        """The first value of a plain field, `default` when the form has none."""
        return next((value for field, value in self.fields if field == name), default)


def request_form() -> Form:
    """The form the current request carries; Flask's MAX_FORM_PARTS and MAX_FORM_MEMORY_SIZE still apply."""
    boundary = request.mimetype_params.get("boundary", "")
    # RFC 2046 allows 70 characters at most, but encoders in use write longer ones (werkzeug's test client
    # up to 72), and werkzeug's parser takes them: so does this one.
    if not boundary or not boundary.isascii():
        raise _malformed("its Content-Type has no boundary parameter of ASCII characters")
    # Not cached on the request: the body is freed once the parts are cut out of it.
    return parse_form(request.get_data(cache=False), boundary.encode("ascii"),
                      request.max_form_parts, request.max_form_memory_size)


def parse_form(body: bytes, boundary: bytes, max_parts: int | None = None,
               max_field_bytes: int | None = None) -> Form:
    """The parts of a multipart body; more parts than `max_parts`, or plain fields whose values together pass
    `max_field_bytes`, are refused as werkzeug refuses them (413)."""
    delimiter = _CRLF + b"--" + boundary
    position = _after_first_delimiter(body, delimiter)
    files, fields, field_bytes = [], [], 0
    while not body.startswith(b"--", position):  # the closing delimiter ends in "--"
        index = len(files) + len(fields)
        if max_parts is not None and index >= max_parts:
            raise RequestEntityTooLarge()
        headers_start = _after_delimiter_line(body, position)
        headers_end = body.find(_HEADERS_END, headers_start - 2, headers_start + MAX_PART_HEADER_BYTES)
        if headers_end < 0:
            raise _malformed(f"part {index}'s headers have no end within {MAX_PART_HEADER_BYTES} bytes "
                             "(a blank line ends them)")
        content_start = headers_end + len(_HEADERS_END)
        # From the blank line's own CRLF: an empty file is sent by some encoders (werkzeug's among them) as the
        # blank line then at once the next delimiter, the one CRLF serving both.
        content_end = body.find(delimiter, content_start - len(_CRLF))
        if content_end < 0:
            raise _malformed("the body ends inside a part: no closing delimiter")
        name, filename, charset = _disposition(body[headers_start:headers_end], index)
        content = body[content_start:content_end]  # empty when content_end is before content_start
        if filename is None:
            field_bytes += len(content)
            if max_field_bytes is not None and field_bytes > max_field_bytes:
                raise RequestEntityTooLarge()
            fields.append((name, content.decode(charset, "replace")))
        else:
            files.append((name, content))
        position = content_end + len(delimiter)
    return Form(tuple(files), tuple(fields))


def _after_first_delimiter(body: bytes, delimiter: bytes) -> int:
    """Where the first delimiter ends. Most clients open the body with it; a preamble before it is allowed."""
    first_line = delimiter[len(_CRLF):]  # "--" and the boundary
    if body.startswith(first_line):
        return len(first_line)
    found = body.find(delimiter)
    if found < 0:
        raise _malformed(f"no line starts with the delimiter {first_line.decode()}")
    return found + len(delimiter)


def _after_delimiter_line(body: bytes, position: int) -> int:
    """Where the headers start after a delimiter: RFC 2046 allows spaces and tabs before its line break."""
    line_end = body.find(_CRLF, position, position + 256)
    if line_end < 0 or body[position:line_end].strip(b" \t"):
        raise _malformed("a delimiter is not followed by a line break")
    return line_end + len(_CRLF)


def _disposition(headers: bytes, index: int) -> tuple[str, str | None, str]:
    """A part's field name, file name (None for a plain field) and the charset of a plain field's value."""
    disposition, content_type = None, ""
    for line in headers.decode("latin-1").split("\r\n") if headers else ():
        name, colon, value = line.partition(":")
        if not colon:
            raise _malformed(f"part {index} has a header line without a colon")
        if name.strip().lower() == "content-disposition":
            disposition = value.strip()
        elif name.strip().lower() == "content-type":
            content_type = value.strip()
    kind, parameters = parse_options_header(disposition)
    if kind != "form-data" or "name" not in parameters:
        raise _malformed(f"part {index} has no Content-Disposition: form-data; name=\"...\"")
    charset = parse_options_header(content_type)[1].get("charset", "utf-8")
    return parameters["name"], parameters.get("filename"), _known_charset(charset)


def _known_charset(charset: str) -> str:
    """A field's declared charset among the few clients send (werkzeug's list), else UTF-8."""
    return charset.lower() if charset.lower() in _FIELD_CHARSETS else "utf-8"


def _malformed(what: str) -> ApiError:
    return ApiError(400, "invalid_multipart", f"the multipart/form-data body is malformed: {what}")
