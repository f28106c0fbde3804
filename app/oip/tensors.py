"""The Open Inference Protocol's tensors on the wire (KServe v2 / Triton HTTP/REST): an inference request read from
its JSON header and binary sections (the binary tensor data extension), and a response written either way. Pure
Python (no torch, no numpy: the server process maps neither); every length, count and shape is checked before
anything is allocated by it, and every mistake is a ProtocolError, answered 400 with the protocol's {"error": ...}.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from array import array
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

HEADER_LENGTH = "inference-header-content-length"  # lower case, as ASGI gives header names
# Numeric datatypes: (array typecode, bytes per element). BYTES elements are a 4-byte little-endian length each,
# then the bytes; in JSON, a string (UTF-8 text; the encode models take an encoded picture's base64 text).
NUMERIC = {
    "BOOL": ("B", 1), "UINT8": ("B", 1), "UINT16": ("H", 2), "UINT32": ("I", 4), "UINT64": ("Q", 8),
    "INT8": ("b", 1), "INT16": ("h", 2), "INT32": ("i", 4), "INT64": ("q", 8), "FP32": ("f", 4), "FP64": ("d", 8),
}  # fmt: skip
DATATYPES = (*NUMERIC, "BYTES")
MAX_DIMS = 8
MAX_TENSORS = 16  # inputs or outputs named in one request: the models have at most four of each
MAX_DEPTH = 16  # nesting of a tensor's JSON data (a shape has at most MAX_DIMS dimensions)


class ProtocolError(ValueError):
    """A request the protocol cannot read: 400 with {"error": str(e)}."""


class Tensor(NamedTuple):
    """One named tensor: its datatype, shape and its elements flattened in row-major order (numbers, or bytes for
    BYTES)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: Sequence[Any]
    binary: bool = False  # read from binary tensor data (for BYTES: the elements' own bytes, not JSON text)


class Output(NamedTuple):
    """An output the request asked for; binary: as binary tensor data."""

    name: str
    binary: bool


class Request(NamedTuple):
    id: str | None
    parameters: dict[str, Any]
    inputs: list[Tensor]
    outputs: list[Output] | None  # None: every output, each as binary_default says
    binary_default: bool  # the request's binary_data_output parameter


MAX_KEYS = 32  # members of one JSON object: the protocol's objects have a handful
MAX_TEXT = 1024  # characters of a request's id or of a string parameter: names and tags, never data


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs) or len(pairs) > MAX_KEYS:
        seen = [k for i, (k, _) in enumerate(pairs) if k in dict(pairs[:i])]
        raise ProtocolError(
            f"a JSON object repeats {seen[0]!r:.40}" if seen else f"a JSON object has over {MAX_KEYS} keys"
        )
    return obj


def _constant(name: str) -> float:
    raise ProtocolError(f"{name} is not a number JSON allows")


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a JSON object")
    return value


def _parameters(obj: dict[str, Any], where: str) -> dict[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise ProtocolError(f"{where}.parameters must be an object of strings, numbers and booleans")
    for value in params.values():
        if isinstance(value, dict | list):
            raise ProtocolError(f"{where}.parameters must be an object of strings, numbers and booleans")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise ProtocolError(f"{where}.parameters: a string over {MAX_TEXT} characters")
    return params


def _shape(value: Any, where: str, max_elements: int) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_DIMS:
        raise ProtocolError(f"{where}.shape must be a list of at most {MAX_DIMS} dimensions")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise ProtocolError(f"{where}.shape must hold non-negative integers, not {value!r:.80}")
    shape = tuple(value)
    if math.prod(shape) > max_elements:
        raise ProtocolError(f"{where} has {math.prod(shape)} elements, over the limit of {max_elements}")
    return shape


def _flatten(data: Any, where: str) -> list[Any]:
    """A tensor's JSON data, nested or flat, as one row-major list (without recursion: no depth limit to hit)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack: list[tuple[list[Any], int]] = [(data, 0)]
    while stack:
        items, i = stack.pop()
        if i < len(items):
            stack.append((items, i + 1))
            item = items[i]
            if isinstance(item, list):
                if len(stack) >= MAX_DEPTH:
                    raise ProtocolError(f"{where}.data is nested deeper than {MAX_DEPTH}")
                stack.append((item, 0))
            else:
                out.append(item)
    return out


def _json_elements(datatype: str, values: list[Any], where: str) -> list[Any]:
    if datatype == "BYTES":
        if not all(isinstance(v, str) for v in values):
            raise ProtocolError(f"{where}: BYTES data in JSON must be strings")
        try:
            return [v.encode() for v in values]
        except UnicodeEncodeError:  # a lone surrogate (JSON's "\ud800") is no UTF-8 text
            raise ProtocolError(f"{where}: BYTES data in JSON must be UTF-8 text") from None
    if datatype == "BOOL":
        if not all(isinstance(v, bool) for v in values):
            raise ProtocolError(f"{where}: BOOL data must be true or false")
        return values
    if datatype.startswith(("INT", "UINT")):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ProtocolError(f"{where}: {datatype} data must be integers")
        try:
            array(NUMERIC[datatype][0], values)  # the range of the type
        except OverflowError as e:
            raise ProtocolError(f"{where}: a value out of {datatype}'s range") from e
        return values
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        raise ProtocolError(f"{where}: {datatype} data must be numbers")
    return [float(v) for v in values]


def _binary_elements(datatype: str, raw: memoryview, count: int, where: str) -> Sequence[Any]:
    if datatype == "BYTES":
        out, at = [], 0
        while at < len(raw):
            if at + 4 > len(raw):
                raise ProtocolError(f"{where}: a BYTES element's length is cut short")
            (n,) = struct.unpack_from("<I", raw, at)
            if at + 4 + n > len(raw):
                raise ProtocolError(f"{where}: a BYTES element says {n} bytes, more than its binary data holds")
            out.append(bytes(raw[at + 4 : at + 4 + n]))
            at += 4 + n
            if len(out) > count:
                break
        if len(out) != count:
            raise ProtocolError(f"{where}: its binary data holds {len(out)} BYTES elements, its shape {count}")
        return out
    code, size = NUMERIC[datatype]
    if len(raw) != count * size:
        raise ProtocolError(
            f"{where}: binary_data_size is {len(raw)} bytes; its shape and {datatype} need {count * size}"
        )
    values = array(code)
    values.frombytes(raw)
    if sys.byteorder == "big":
        values.byteswap()
    return [bool(v) for v in values] if datatype == "BOOL" else values


def read_request(body: bytes, header_length: int | None, *, max_elements: int) -> Request:
    """The request in `body`: its first header_length bytes JSON, the rest the binary sections of the inputs with a
    binary_data_size, in their order (header_length None: all JSON). max_elements bounds each input."""
    size = len(body) if header_length is None else header_length
    if not 0 <= size <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length is {header_length}, the body {len(body)} bytes")
    try:
        # UTF-8 only, as JSON between systems is (RFC 8259): json.loads would take UTF-16 and 32 bytes, or a BOM
        text = body[:size].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("the request's JSON is not UTF-8") from None
    try:
        head = _object(json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant), "the request")
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:
        raise ProtocolError(f"the request's JSON is malformed: {e}") from None
    inputs_json = head.get("inputs")
    if not isinstance(inputs_json, list) or not 0 < len(inputs_json) <= MAX_TENSORS:
        raise ProtocolError(f"the request needs inputs: a list of 1 to {MAX_TENSORS} tensors")
    request_id = head.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_TEXT):
        raise ProtocolError(f"id must be a string of at most {MAX_TEXT} characters")
    binary = memoryview(body)[size:]
    at, inputs = 0, []
    for i, raw_input in enumerate(inputs_json):
        where = f"inputs[{i}]"
        obj = _object(raw_input, where)
        name, datatype = obj.get("name"), obj.get("datatype")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"{where}.name must be a non-empty string")
        where = f"input {name!r:.40}"
        if datatype not in DATATYPES:
            raise ProtocolError(f"{where}: datatype must be one of {', '.join(DATATYPES)}, not {datatype!r:.40}")
        shape = _shape(obj.get("shape"), where, max_elements)
        count = math.prod(shape)
        params = _parameters(obj, where)
        binary_size = params.get("binary_data_size")
        if binary_size is not None:
            if "data" in obj:
                raise ProtocolError(f"{where} has both data and binary_data_size")
            if not isinstance(binary_size, int) or isinstance(binary_size, bool) or binary_size < 0:
                raise ProtocolError(f"{where}: binary_data_size must be a non-negative integer")
            if at + binary_size > len(binary):
                raise ProtocolError(f"{where}: binary_data_size {binary_size} runs past the end of the body")
            data = _binary_elements(datatype, binary[at : at + binary_size], count, where)
            at += binary_size
        else:
            if "data" not in obj:
                raise ProtocolError(f"{where} has no data (nor binary_data_size)")
            values = _flatten(obj["data"], where)
            if len(values) != count:
                raise ProtocolError(f"{where}: its data holds {len(values)} elements, its shape {list(shape)} {count}")
            data = _json_elements(datatype, values, where)
        inputs.append(Tensor(name, datatype, shape, data, binary_size is not None))
    if at != len(binary):
        raise ProtocolError(f"the body holds {len(binary) - at} bytes after the inputs' binary data")
    names = [t.name for t in inputs]
    if len(set(names)) != len(names):
        raise ProtocolError("an input is named twice")
    params = _parameters(head, "the request")
    binary_default = params.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise ProtocolError("binary_data_output must be true or false")
    return Request(request_id, params, inputs, _outputs(head.get("outputs")), binary_default)


def _outputs(value: Any) -> list[Output] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_TENSORS:
        raise ProtocolError(f"outputs must be a list of at most {MAX_TENSORS} outputs")
    out = []
    for i, raw in enumerate(value):
        obj = _object(raw, f"outputs[{i}]")
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            raise ProtocolError(f"outputs[{i}].name must be a non-empty string")
        binary = _parameters(obj, f"output {name!r:.40}").get("binary_data", False)
        if not isinstance(binary, bool):
            raise ProtocolError(f"output {name!r:.40}: binary_data must be true or false")
        out.append(Output(name, binary))
    if len({o.name for o in out}) != len(out):
        raise ProtocolError("an output is named twice")
    return out


def _binary(t: Tensor) -> bytes:
    if t.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in t.data)
    if isinstance(t.data, bytes | bytearray):  # UINT8 pixels as they are
        return bytes(t.data)
    code = NUMERIC[t.datatype][0]
    values = t.data if isinstance(t.data, array) and t.data.typecode == code else array(code, t.data)
    if sys.byteorder == "big":  # the protocol's binary data is little-endian; swapped in a copy
        values = array(code, values)
        values.byteswap()
    return values.tobytes()


# A byte's JSON text in four characters, right-aligned, and a comma: "  7," " 42," "255,", written by three
# bytes.translate calls and four strided copies, all in C, instead of a Python string per pixel; the spaces are then
# deleted in one more pass (docs/performance.md: the writer's cost, measured).
_HUNDREDS = bytes(ord(str(v // 100)) if v >= 100 else 32 for v in range(256))
_TENS = bytes(ord(str(v // 10 % 10)) if v >= 10 else 32 for v in range(256))
_UNITS = bytes(ord(str(v % 10)) for v in range(256))


def _json_pixels(data: bytes | bytearray) -> bytes:
    """UINT8 data as a JSON array: "[" then each element's digits and a comma, the last comma replaced by "]"
    (written four bytes an element, three digits with spaces for leading zeros, and the spaces then deleted)."""
    n = len(data)
    if not n:
        return b"[]"
    out = bytearray(4 * n + 1)
    out[0] = 0x5B  # [
    out[1::4] = data.translate(_HUNDREDS)
    out[2::4] = data.translate(_TENS)
    out[3::4] = data.translate(_UNITS)
    out[4::4] = b"," * n
    out[-1] = 0x5D  # ]
    return bytes(out).translate(None, b" ")  # the leading zeros' spaces dropped: a dark image's text nearly halves


def _json_data(t: Tensor) -> bytes:
    """An output's data as JSON text (UTF-8). FP32 numbers in nine significant digits, which name every float32 exactly
    (IEEE 754's 9 for binary32; -0 reads as 0, equal as a number): half of json.dumps's cost and text, which writes the
    double's 17."""
    if isinstance(t.data, bytes | bytearray):
        return _json_pixels(t.data)
    if t.datatype == "FP32" and all(map(math.isfinite, t.data)):
        return b"[%s]" % ",".join(map("%.9g".__mod__, t.data)).encode()
    values = [v.decode("utf-8", "backslashreplace") for v in t.data] if t.datatype == "BYTES" else list(t.data)
    return json.dumps(values, separators=(",", ":"), allow_nan=False).encode()


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def write_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: Iterable[tuple[Tensor, bool]],
    *,
    parameters: dict[str, Any] | None = None,
) -> tuple[bytes, int | None]:
    """-> (body, the Inference-Header-Content-Length to send, or None when every output is JSON). Each output with
    True goes as binary tensor data, after the JSON, in the order given; parameters, when any, are the response's."""
    described: list[bytes] = []
    sections: list[bytes] = []
    for t, binary in outputs:
        entry: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary:
            section = _binary(t)
            entry["parameters"] = {"binary_data_size": len(section)}
            sections.append(section)
            described.append(_json(entry).encode())
        else:  # the entry's JSON with its data's spliced in before the closing brace
            described.append(b'%s,"data":%s}' % (_json(entry)[:-1].encode(), _json_data(t)))
    head: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        head["id"] = request_id
    if parameters:
        head["parameters"] = parameters
    header = b'%s,"outputs":[%s]}' % (_json(head)[:-1].encode(), b",".join(described))
    if not sections:
        return header, None
    return b"".join([header, *sections]), len(header)
