"""Canonical JSON: exact bytes, strict decoding, and the edge cases that break signatures."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bsipatch.errors import FormatError
from bsipatch.trust.canonical import decode, encode


def test_known_answer_sorted_keys_no_whitespace():
    obj = {"b": [1, True, None], "a": {"z": "x", "y": -5}, "A": False}
    assert encode(obj) == b'{"A":false,"a":{"y":-5,"z":"x"},"b":[1,true,null]}'


def test_keys_sorted_by_code_point_not_locale():
    obj = {"é": 1, "z": 2, "Z": 3, "\U0001f600": 4, "a": 5}
    assert list(decode(encode(obj))) == ["Z", "a", "z", "é", "\U0001f600"]


def test_unicode_is_raw_utf8_and_round_trips():
    s = "Grüße \u2013 日本語 \U0001f512 e\u0301"
    data = encode({"s": s})
    assert data == b'{"s":"' + s.encode("utf-8") + b'"}'
    assert decode(data, canonical=True) == {"s": s}


def test_control_characters_escaped_and_round_trip():
    s = 'quote " backslash \\ nul \x00 tab \t nl \n del \x7f'
    data = encode([s])
    assert b"\x00" not in data and b"\n" not in data
    assert decode(data, canonical=True) == [s]


@pytest.mark.parametrize("n", [0, -1, 2**53 + 1, 2**64, -(2**100), 10**300])
def test_large_integers_round_trip_exactly(n):
    data = encode({"n": n})
    assert data == b'{"n":' + str(n).encode() + b"}"
    assert decode(data, canonical=True)["n"] == n


@pytest.mark.parametrize("value", [1.0, 0.5, -0.0, float("nan"), float("inf"), float("-inf")])
def test_floats_refused_on_encode(value):
    with pytest.raises(FormatError):
        encode({"x": [value]})


@pytest.mark.parametrize("text", [b"1.0", b"1e3", b"-0.5", b"[2E-1]", b'{"a":1.5}'])
def test_floats_refused_on_decode(text):
    with pytest.raises(FormatError, match="float"):
        decode(text)


@pytest.mark.parametrize("text", [b"NaN", b"[Infinity]", b'{"a":-Infinity}'])
def test_nan_and_infinity_refused_on_decode(text):
    with pytest.raises(FormatError):
        decode(text)


@pytest.mark.parametrize(
    "text", [b'{"a":1,"a":2}', b'{"x":{"k":1,"k":1}}', b'[{"s":"a","t":0,"s":"b"}]']
)
def test_duplicate_keys_refused_even_nested_or_identical(text):
    with pytest.raises(FormatError, match="duplicate key"):
        decode(text)


@pytest.mark.parametrize("obj", [{1: "a"}, {None: 1}, {("t",): 1}, {"ok": {b"k": 1}}])
def test_non_string_keys_refused(obj):
    with pytest.raises(FormatError, match="keys must be strings"):
        encode(obj)


@pytest.mark.parametrize("obj", [b"bytes", {1, 2}, object(), {"a": 1j}])
def test_unsupported_types_refused(obj):
    with pytest.raises(FormatError):
        encode(obj)


def test_lone_surrogate_refused_both_ways():
    with pytest.raises(FormatError):
        encode("\ud800")
    with pytest.raises(FormatError):
        decode(b'"\\ud800"')


def test_invalid_utf8_and_bom_refused():
    with pytest.raises(FormatError, match="UTF-8"):
        decode(b'"\xff"')
    with pytest.raises(FormatError, match="byte-order mark"):
        decode(b'\xef\xbb\xbf{"a":1}')


@pytest.mark.parametrize(
    "text",
    [
        b'{"b":1,"a":2}',  # unsorted
        b'{"a": 1}',  # white space
        b'{"a":1}\n',  # trailing newline
        b'"\\u00e9"',  # needless escape
        b"-0",  # negative zero
        b'"\\/"',  # escaped slash
    ],
)
def test_canonical_mode_refuses_equivalent_but_different_bytes(text):
    decode(text)  # valid JSON...
    with pytest.raises(FormatError, match="canonical"):
        decode(text, canonical=True)  # ...but not the canonical bytes


def test_deep_nesting_refused():
    deep = b"[" * 5000 + b"]" * 5000
    with pytest.raises(FormatError):
        decode(deep)
    with pytest.raises(FormatError):
        encode(json.loads(b"[" * 100 + b"]" * 100))


def test_garbage_refused():
    for text in (b"", b"{", b'{"a"}', b"[1,]", b"tru", b"'a'"):
        with pytest.raises(FormatError):
            decode(text)


def test_bool_stays_bool_and_tuple_is_array():
    assert encode([True, False, (1, 2)]) == b"[true,false,[1,2]]"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=8), children, max_size=4
        )
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_property_encode_decode_round_trip_is_identity(value):
    data = encode(value)
    assert decode(data, canonical=True) == value
    assert encode(decode(data)) == data
    # the standard library reads the same value
    assert json.loads(data.decode("utf-8")) == value
