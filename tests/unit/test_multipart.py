"""The API's multipart/form-data parser reads every well-formed form as werkzeug's parser does, and refuses
a malformed one with 400 invalid_multipart (413 past Flask's part and field limits), never another error."""

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from urllib3 import encode_multipart_formdata
from werkzeug.datastructures import Headers
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import parse_form_data
from werkzeug.test import EnvironBuilder

from app.errors import ApiError
from app.multipart import MAX_PART_HEADER_BYTES, parse_form
from tests.unit.fake_api import TABBY, answer_next_request, heartbeat, success
from tests.unit.test_api import assert_error, photo_bytes

BOUNDARY = b"b0undary"


def werkzeugs_reading(body: bytes, boundary: bytes) -> tuple[dict, dict]:
    """What werkzeug's own streaming parser, the one the API used before, makes of the same body: the values of
    each field name in the order sent (werkzeug keeps no order across names)."""
    environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": f"multipart/form-data; boundary={boundary.decode()}",
               "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    _, form, files = parse_form_data(environ, max_form_memory_size=None)
    return ({name: [upload.read() for upload in uploads] for name, uploads in files.lists()}, dict(form.lists()))


def ours(body: bytes, boundary: bytes) -> tuple[dict, dict]:
    form = parse_form(body, boundary)
    return by_name(form.files), by_name(form.fields)


def by_name(parts: tuple[tuple[str, object], ...]) -> dict[str, list]:
    named: dict[str, list] = {}
    for name, value in parts:
        named.setdefault(name, []).append(value)
    return named


def body_of(parts: list[tuple[str, str | None, bytes]], boundary: bytes = BOUNDARY, preamble: bytes = b"",
            epilogue: bytes = b"") -> bytes:
    """A body as RFC 7578 writes it: (field name, file name or None for a plain field, content) per part."""
    body = preamble
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n"
        if filename is not None:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n" + epilogue


names = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, exclude_characters='"\\%'), min_size=1,
                max_size=12)
contents = st.binary(max_size=300).filter(lambda content: BOUNDARY not in content)
parts = st.lists(st.tuples(names, st.one_of(st.none(), names), contents), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(parts, st.sampled_from([b"", b"a preamble\r\n"]), st.sampled_from([b"", b"an epilogue"]))
def test_any_well_formed_form_reads_as_werkzeug_reads_it(parts, preamble, epilogue):
    body = body_of(parts, preamble=preamble, epilogue=epilogue)
    assert ours(body, BOUNDARY) == werkzeugs_reading(body, BOUNDARY)
    assert [content for _, filename, content in parts if filename is not None] == [
        content for _, content in parse_form(body, BOUNDARY).files]


def test_what_requests_sends_reads_as_werkzeug_reads_it():
    """requests (and urllib3 under it) encodes the forms most Python clients send."""
    fields = [("image", ("astronaut.png", photo_bytes("astronaut.png"), "image/png")),
              ("image", ("rocket.jpg", photo_bytes("rocket.jpg"), "image/jpeg")), ("top_k", "3"),
              ("image", ("empty.png", b"", "image/png"))]
    body, content_type = encode_multipart_formdata(fields)
    boundary = content_type.split("boundary=")[1].encode()
    form = parse_form(body, boundary)
    assert form.files_named("image") == [photo_bytes("astronaut.png"), photo_bytes("rocket.jpg"), b""]
    assert form.field("top_k") == "3" and form.field("absent") is None
    assert ours(body, boundary) == werkzeugs_reading(body, boundary)


def test_a_boundary_longer_than_rfc_2046s_70_characters_is_taken_as_werkzeugs_test_client_writes_one(
        client, fake_redis):
    # werkzeug.test's f"---------------WerkzeugFormPart_{time()}{random()}", at its longest
    boundary = b"---------------WerkzeugFormPart_1764811077.28012331.2345678901234567e-05"
    assert len(boundary) == 72
    heartbeat(fake_redis)
    seen = answer_next_request(fake_redis, success(TABBY))
    body = body_of([("image", "chelsea.png", photo_bytes("chelsea.png"))], boundary)
    response = client.post("/predict", data=body, content_type=f"multipart/form-data; boundary={boundary.decode()}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["predictions"] == TABBY and seen["request"].job_id == response.get_json()["id"]


def test_an_empty_file_written_as_werkzeugs_encoder_writes_it_is_empty():
    """Werkzeug's test client follows an empty file's blank line at once with the next delimiter."""
    environ = EnvironBuilder(method="POST", data={"image": (io.BytesIO(b""), "x.png"), "top_k": "2"}).get_environ()
    boundary = environ["CONTENT_TYPE"].split("boundary=")[1].strip('"').encode()
    body = environ["wsgi.input"].read()
    assert ours(body, boundary) == werkzeugs_reading(body, boundary) == ({"image": [b""]}, {"top_k": ["2"]})


def test_a_field_value_is_read_in_its_declared_charset_and_file_names_may_be_encoded():
    body = (b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="note"\r\n'
            b"Content-Type: text/plain; charset=ISO-8859-1\r\n\r\n\xe9t\xe9\r\n--" + BOUNDARY +
            b'\r\nContent-Disposition: form-data; name="other"\r\n'
            b"Content-Type: text/plain; charset=x-unheard-of\r\n\r\n\xc3\xa9\r\n--" + BOUNDARY +
            b"\r\nContent-Disposition: form-data; name=\"image\"; filename*=UTF-8''%C3%A9.png\r\n\r\nx\r\n--"
            + BOUNDARY + b"--")
    expected = ({"image": [b"x"]}, {"note": ["été"], "other": ["é"]})
    assert ours(body, BOUNDARY) == werkzeugs_reading(body, BOUNDARY) == expected


@pytest.mark.parametrize("body, complaint", [
    (b"no delimiter at all", "no line starts with the delimiter --b0undary"),
    (b"--b0undary\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a\"\r\n\r\nthe upload was cut",
     "no closing delimiter"),
    (b"--b0undary\r\nContent-Disposition: form-data; name=\"image\"" + b"x" * MAX_PART_HEADER_BYTES,
     "headers have no end within 8192 bytes"),
    (b"--b0undary\r\nContent-Type: image/png\r\n\r\nx\r\n--b0undary--", "has no Content-Disposition"),
    (b"--b0undary\r\nContent-Disposition: attachment; name=\"image\"\r\n\r\nx\r\n--b0undary--",
     "has no Content-Disposition: form-data"),
    (b"--b0undary\r\nContent-Disposition form-data\r\n\r\nx\r\n--b0undary--", "a header line without a colon"),
    (b"--b0undaryX\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nx\r\n--b0undary--",
     "not followed by a line break"),
    (b"--b0undary\nContent-Disposition: form-data; name=\"a\"\n\nx\n--b0undary--\n", "not followed by a line break"),
])
def test_a_malformed_body_is_400_saying_where_it_went_wrong(body, complaint):
    with pytest.raises(ApiError) as refused:
        parse_form(body, BOUNDARY)
    assert (refused.value.status, refused.value.code) == (400, "invalid_multipart")
    assert complaint in refused.value.message


def test_more_parts_than_allowed_or_larger_plain_fields_are_413_as_with_werkzeug():
    three_files = body_of([("image", "a", b"x")] * 3)
    assert len(parse_form(three_files, BOUNDARY, max_parts=3).files) == 3
    with pytest.raises(RequestEntityTooLarge):
        parse_form(three_files, BOUNDARY, max_parts=2)
    fields = body_of([("a", None, b"x" * 600), ("b", None, b"y" * 600), ("image", "f", b"z" * 5000)])
    assert parse_form(fields, BOUNDARY, max_field_bytes=1200).field("b") == "y" * 600  # files do not count
    with pytest.raises(RequestEntityTooLarge):
        parse_form(fields, BOUNDARY, max_field_bytes=1199)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.lists(st.tuples(names, st.one_of(st.none(), names), contents), max_size=3),
       st.integers(min_value=0, max_value=400))
def test_any_bytes_parse_or_are_refused_never_another_error(noise, parts, cut):
    """Random bytes, and well-formed bodies cut short or with noise spliced in."""
    well_formed = body_of(parts)
    for body in (noise, well_formed[:cut], well_formed[:cut] + noise + well_formed[cut:]):
        try:
            parse_form(body, BOUNDARY, max_parts=1000, max_field_bytes=500_000)
        except ApiError as refused:
            assert refused.status == 400 and refused.code == "invalid_multipart"


def test_through_the_app_a_malformed_form_or_one_without_a_boundary_is_400_invalid_multipart(client):
    cut = body_of([("image", "chelsea.png", photo_bytes("chelsea.png"))])[:1000]
    response = client.post("/predict", data=cut, content_type=f"multipart/form-data; boundary={BOUNDARY.decode()}")
    assert_error(response, 400, "invalid_multipart")
    response = client.post("/predict", data=cut, headers=Headers({"Content-Type": "multipart/form-data"}))
    assert_error(response, 400, "invalid_multipart")
    assert "boundary" in response.get_json()["error"]["message"]
