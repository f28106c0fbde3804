"""The Open Inference Protocol's tensors on the wire (app/oip/tensors.py): requests read from JSON and binary tensor
data alike, responses written either way, and every malformed or lying request a ProtocolError."""

from __future__ import annotations

import json
import struct
from array import array
from typing import Any

import pytest

from app.oip.tensors import Output, ProtocolError, Tensor, read_request, write_response

LIMIT = 1000


def binary_request(head: dict[str, Any], *sections: bytes) -> tuple[bytes, int]:
    header = json.dumps(head).encode()
    return header + b"".join(sections), len(header)


def bytes_elements(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_json_tensors_nested_or_flat_are_read_row_major() -> None:
    body = json.dumps({
        "id": "r1",
        "parameters": {"seed": 3, "temperature": 0.5},
        "inputs": [
            {"name": "label", "datatype": "INT64", "shape": [3], "data": [1, 2, 3]},
            {"name": "latent", "datatype": "FP32", "shape": [3, 2], "data": [[1, 2], [3.5, 4], [5, 6]]},
            {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]},
        ],
        "outputs": [{"name": "image", "parameters": {"binary_data": True}}, {"name": "latent"}],
    }).encode()  # fmt: skip
    r = read_request(body, None, max_elements=LIMIT)
    assert r.id == "r1" and r.parameters == {"seed": 3, "temperature": 0.5} and not r.binary_default
    assert r.inputs == [
        Tensor("label", "INT64", (3,), [1, 2, 3]),
        Tensor("latent", "FP32", (3, 2), [1.0, 2.0, 3.5, 4.0, 5.0, 6.0]),
        Tensor("image", "BYTES", (1,), [b"aGk="]),
    ]
    assert r.outputs == [Output("image", True), Output("latent", False)]


def test_binary_tensors_are_read_in_the_order_of_their_inputs() -> None:
    labels = struct.pack("<3q", 7, -1, 2**40)
    latent = struct.pack("<2f", 0.25, -1.5)
    images = bytes_elements(b"\x89PNG...", b"", b"\xff\xd8jpeg")
    body, length = binary_request(
        {"inputs": [
            {"name": "label", "datatype": "INT64", "shape": [3], "parameters": {"binary_data_size": len(labels)}},
            {"name": "latent", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": len(latent)}},
            {"name": "image", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(images)}},
        ], "parameters": {"binary_data_output": True}},
        labels, latent, images,
    )  # fmt: skip
    r = read_request(body, length, max_elements=LIMIT)
    assert [list(t.data) for t in r.inputs] == [[7, -1, 2**40], [0.25, -1.5], [b"\x89PNG...", b"", b"\xff\xd8jpeg"]]
    assert r.binary_default and r.outputs is None


@pytest.mark.parametrize(
    ("head", "sections", "says"),
    [
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [2], "parameters": {"binary_data_size": 8}}]},
         [struct.pack("<2q", 1, 2)], "need 16"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 80}}]},
         [struct.pack("<q", 1)], "runs past the end"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "parameters": {"binary_data_size": 8}}]},
         [struct.pack("<2q", 1, 2)], "after the inputs"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]},
         [struct.pack("<I", 1000) + b"abcde"], "more than its binary data holds"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": 7}}]},
         [bytes_elements(b"abc")], "holds 1 BYTES elements, its shape 2"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]},
         [bytes_elements(b"a") + b"\x01"], "cut short"),
    ],
)  # fmt: skip
def test_binary_data_that_lies_about_its_length_is_refused(head, sections, says) -> None:
    body, length = binary_request(head, *sections)
    with pytest.raises(ProtocolError, match=says):
        read_request(body, length, max_elements=LIMIT)


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        ({}, "needs inputs"),
        ({"inputs": []}, "needs inputs"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [3], "data": [1, 2]}]}, "holds 2 elements"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1.5]}]}, "must be integers"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [True]}]}, "must be integers"),
        ({"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}, "out of INT8's range"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": ["1"]}]}, "must be numbers"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [1]}]}, "must be strings"),
        ({"inputs": [{"name": "x", "datatype": "FP17", "shape": [1], "data": [1]}]}, "datatype must be one of"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1], "data": []}]}, "non-negative integers"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [10**6], "data": []}]}, "over the limit of 1000"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1] * 9, "data": [1]}]}, "at most 8 dimensions"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1]}]}, "has no data"),
        ({"inputs": [{"datatype": "INT64", "shape": [1], "data": [1]}]}, "name must be"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}] * 2}, "named twice"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}], "outputs": [{"name": 1}]},
         "outputs\\[0\\].name"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}], "parameters": {"a": {"b": 1}}},
         "parameters must be"),
        ({"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}], "id": 5}, "id must be"),
        ({"inputs": "x"}, "needs inputs"),
        ([1], "must be a JSON object"),
    ],
)  # fmt: skip
def test_malformed_json_requests_are_refused_saying_what_to_fix(request_, says) -> None:
    with pytest.raises(ProtocolError, match=says):
        read_request(json.dumps(request_).encode(), None, max_elements=LIMIT)


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"{", "malformed"),
        (b'{"inputs": [], "inputs": []}', "repeats 'inputs'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}', "NaN is not a number"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed"),
        (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": ' + b"[" * 40 + b"1" + b"]" * 40
         + b"}]}", "nested deeper"),
        (b"\xff\xfe", "not UTF-8"),
        ('{"inputs": [], "id": "caf\u00e9"}'.encode("latin-1"), "not UTF-8"),
        ('{"inputs": []}'.encode("utf-16"), "not UTF-8"),  # json.loads would read it: JSON is UTF-8 only
        (b'\xef\xbb\xbf{"inputs": []}', "malformed"),  # a byte-order mark
        (b'{"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": ["\\ud800"]}]}', "UTF-8 text"),
        (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}], "parameters": {"s": "'
         + b"x" * 1025 + b'"}}', "over 1024 characters"),
        (b'{"inputs": [{"name": "x", "datatype": "INT64", "shape": [1], "data": [1]}], "id": "' + b"x" * 1025 + b'"}',
         "at most 1024 characters"),
    ],
)  # fmt: skip
def test_hostile_json_is_refused_without_a_crash(body, says) -> None:
    with pytest.raises(ProtocolError, match=says):
        read_request(body, None, max_elements=LIMIT)


@pytest.mark.parametrize("length", [-1, 10**9])
def test_a_header_length_outside_the_body_is_refused(length) -> None:
    with pytest.raises(ProtocolError, match="Inference-Header-Content-Length"):
        read_request(b"{}", length, max_elements=LIMIT)


def test_a_response_goes_as_json_or_binary_per_output_and_reads_back() -> None:
    image = Tensor("image", "UINT8", (1, 2, 2), bytes([0, 1, 254, 255]))
    latent = Tensor("latent", "FP32", (1, 2), [0.5, -2.0])
    labels = Tensor("label", "INT64", (1,), [9])
    body, length = write_response("digits-generate", "cvae-1", "r9", [(image, True), (latent, False), (labels, True)])
    assert length is not None
    head = json.loads(body[:length])
    assert head["model_name"] == "digits-generate" and head["model_version"] == "cvae-1" and head["id"] == "r9"
    assert head["outputs"][1] == {"name": "latent", "datatype": "FP32", "shape": [1, 2], "data": [0.5, -2.0]}
    sizes = [o.get("parameters", {}).get("binary_data_size") for o in head["outputs"]]
    assert sizes == [4, None, 8] and body[length:] == bytes([0, 1, 254, 255]) + struct.pack("<q", 9)
    as_json, none = write_response("m", "1", None, [(image, False)])
    assert none is None and json.loads(as_json)["outputs"][0]["data"] == [0, 1, 254, 255]


def test_what_a_response_writes_as_binary_a_request_reads_back_the_same() -> None:
    tensors = [Tensor("a", "FP32", (2,), [1.5, -3.0]), Tensor("b", "BYTES", (2,), [b"x", b"\x00\xff"]),
               Tensor("c", "INT64", (1,), [-7])]  # fmt: skip
    body, length = write_response("m", "1", None, [(t, True) for t in tensors])
    assert length is not None
    head = json.loads(body[:length])
    request = {"inputs": [{k: o[k] for k in ("name", "datatype", "shape", "parameters")} for o in head["outputs"]]}
    again, again_length = binary_request(request, body[length:])
    assert [(t.name, t.datatype, t.shape, list(t.data)) for t in read_request(again, again_length,
                                                                             max_elements=LIMIT).inputs] == [
        (t.name, t.datatype, t.shape, list(t.data)) for t in tensors
    ]  # fmt: skip


@pytest.mark.parametrize("pixels", [bytes(range(256)), bytes(range(255, -1, -1)) * 3, b"\x07", b""])
def test_pixels_written_as_json_read_back_as_every_byte_value(pixels: bytes) -> None:
    image = Tensor("image", "UINT8", (len(pixels),), pixels)
    body, length = write_response("m", "1", None, [(image, False)])
    assert length is None and json.loads(body)["outputs"][0]["data"] == list(pixels)


def test_fp32_written_as_json_reads_back_as_the_same_float32() -> None:
    values = list(array("f", [0.1, -1 / 3, 3.4028234663852886e38, 1.401298464324817e-45, -0.0, 0.0, 12345.678, 2.5e-7]))
    body, _ = write_response("m", "1", None, [(Tensor("latent", "FP32", (len(values),), values), False)])
    read = json.loads(body)["outputs"][0]["data"]
    assert array("f", read) == array("f", values)  # as numbers: -0 reads back as 0 (JSON has no signed zero)
    text = json.dumps(json.loads(body)["outputs"][0]["data"], separators=(",", ":"))
    assert len(text) < len(json.dumps(values, separators=(",", ":")))  # nine digits, not the double's seventeen
