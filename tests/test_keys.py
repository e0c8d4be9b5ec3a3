"""Order-preserving key encoding (silo/keys.py): property tests.

The encoding must sort like the tuples it encodes, round-trip exactly, give contiguous prefix
ranges, and reject malformed input with :class:`keys.KeyError_`.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silo import keys
from silo.keys import MAX_U64, Prefix

SETTINGS = settings(max_examples=200, deadline=None)

# Characters that stress the escaping and ordering: NUL (escaped as 00 FF), the bytes around the
# terminator and escape markers, the last Latin-1 character, multi-byte UTF-8, the last BMP code
# point and an astral one; plus arbitrary text (never surrogates, which UTF-8 cannot encode).
_TRICKY = ["\x00", "\x01", "\x02", "\x7f", "\x80", "\xfe", "\xff", "é", "\u0100", "\uffff",
           "\U0010ffff", "a", "b"]
tricky_text = st.text(alphabet=st.sampled_from(_TRICKY), max_size=6)
strings = st.one_of(tricky_text, st.text(max_size=8))
u64 = st.one_of(
    st.integers(0, MAX_U64),
    st.sampled_from([0, 1, 255, 256, 2**32 - 1, 2**32, 2**63, MAX_U64 - 1, MAX_U64]),
)
elements = st.one_of(strings, u64)
tuples = st.lists(elements, max_size=5).map(tuple)


@st.composite
def same_shaped_pair(draw: st.DrawFn) -> tuple[tuple, tuple]:
    """Two tuples with the same element types, position by position.

    Half the time the second is derived from the first (a shared prefix, then a difference), so
    near-equal keys and strings that are prefixes of each other come up often.
    """
    shape = draw(st.lists(st.sampled_from([str, int]), max_size=4))
    a = tuple(draw(strings if t is str else u64) for t in shape)
    if shape and draw(st.booleans()):
        i = draw(st.integers(0, len(shape) - 1))
        if shape[i] is str:
            tail = draw(st.sampled_from(["", "\x00", "\x01", "a", "\xff"]))
            changed = draw(st.sampled_from([a[i] + tail, a[i][:-1], a[i][:-1] + tail]))
        else:
            changed = min(MAX_U64, max(0, a[i] + draw(st.integers(-1, 1))))
        rest = tuple(draw(strings if t is str else u64) for t in shape[i + 1 :])
        b = a[:i] + (changed,) + rest
    else:
        b = tuple(draw(strings if t is str else u64) for t in shape)
    return a, b


def _cmp(x: object, y: object) -> int:
    return (x > y) - (x < y)  # type: ignore[operator]


@SETTINGS
@given(same_shaped_pair())
def test_byte_order_equals_tuple_order(pair: tuple[tuple, tuple]) -> None:
    a, b = pair
    ea, eb = keys.encode_tuple(a), keys.encode_tuple(b)
    assert _cmp(ea, eb) == _cmp(a, b)
    # ... and with a table prefix in front, as stored.
    assert _cmp(keys.key(Prefix.READY, *a), keys.key(Prefix.READY, *b)) == _cmp(a, b)


@SETTINGS
@given(st.lists(strings, min_size=2, max_size=8))
def test_sorting_encoded_strings_sorts_the_strings(values: list[str]) -> None:
    encoded = sorted(keys.encode_tuple((v,)) for v in values)
    assert [keys.decode_tuple(e)[0] for e in encoded] == sorted(values)


@SETTINGS
@given(st.lists(u64, min_size=2, max_size=8))
def test_sorting_encoded_ints_sorts_the_ints(values: list[int]) -> None:
    encoded = sorted(keys.encode_tuple((v,)) for v in values)
    assert [keys.decode_tuple(e)[0] for e in encoded] == sorted(values)


def test_string_prefix_edge_cases_sort_correctly() -> None:
    ordered = ["", "\x00", "\x00\x00", "\x00\x01", "\x01", "a", "a\x00", "a\x00b", "a\x01", "ab",
               "\x7f", "\x80", "\xff", "\u0100", "\uffff", "\U0010ffff"]
    assert ordered == sorted(ordered)
    encoded = [keys.encode_tuple((s, 0)) for s in ordered]
    assert encoded == sorted(encoded)


@SETTINGS
@given(tuples)
def test_decode_inverts_encode(t: tuple) -> None:
    assert keys.decode_tuple(keys.encode_tuple(t)) == t
    prefix, decoded = keys.parse(keys.key(Prefix.ATTEMPT, *t))
    assert prefix is Prefix.ATTEMPT
    assert decoded == t


@SETTINGS
@given(tuples, tuples)
def test_encoding_of_a_prefix_is_a_byte_prefix(head: tuple, tail: tuple) -> None:
    assert keys.encode_tuple(head + tail).startswith(keys.encode_tuple(head))


@st.composite
def prefix_and_candidates(draw: st.DrawFn) -> tuple[tuple, list[tuple]]:
    prefix = draw(st.lists(elements, max_size=3).map(tuple))
    candidates = []
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["extend", "mutate", "truncate", "random"]))
        if kind == "extend":
            t = prefix + draw(tuples)
        elif kind == "mutate" and prefix:
            i = draw(st.integers(0, len(prefix) - 1))
            e = prefix[i]
            if isinstance(e, str):
                e2 = draw(st.sampled_from([e + "\x00", e + "a", e[:-1], "\x00" + e, e + "\xff"]))
            else:
                e2 = min(MAX_U64, max(0, e + draw(st.sampled_from([-1, 1]))))
            t = prefix[:i] + (e2,) + draw(tuples)
        elif kind == "truncate" and prefix:
            t = prefix[: draw(st.integers(0, len(prefix) - 1))]
        else:
            t = draw(tuples)
        candidates.append(t)
    return prefix, candidates


@SETTINGS
@given(prefix_and_candidates())
def test_prefix_range_covers_exactly_the_tuples_with_that_prefix(
    case: tuple[tuple, list[tuple]],
) -> None:
    prefix, candidates = case
    start, end = keys.prefix_range(Prefix.JOB, *prefix)
    assert end is not None
    for t in candidates:
        k = keys.key(Prefix.JOB, *t)
        inside = start <= k < end
        assert inside == (t[: len(prefix)] == prefix), (prefix, t)
        # Other tables never fall into the range.
        assert not (start <= keys.key(Prefix.STATUS, *t) < end)


def test_prefix_range_of_a_whole_table() -> None:
    start, end = keys.prefix_range(Prefix.LEASE)
    assert (start, end) == (b"\x07", b"\x08")
    assert keys.prefix_range(Prefix.META)[1] == b"\xf1"


def test_successor() -> None:
    assert keys.successor(b"ab") == b"ac"
    assert keys.successor(b"a\xff") == b"b"
    assert keys.successor(b"\xff\xff") is None
    assert keys.successor(b"") is None


def test_inverted_sorts_newest_first() -> None:
    times = [0, 1, 1_700_000_000_000, MAX_U64]
    enc = [keys.encode_tuple((keys.inverted(t),)) for t in times]
    assert enc == sorted(enc, reverse=True)


MALFORMED = [
    pytest.param(b"\x02\x00\x00", id="truncated-int"),
    pytest.param(b"\x02", id="int-without-body"),
    pytest.param(b"\x01abc", id="unterminated-string"),
    pytest.param(b"\x01abc\x00", id="string-ends-mid-marker"),
    pytest.param(b"\x01a\x00\x05\x00\x01", id="bad-escape"),
    pytest.param(b"\x01\xff\xfe\x00\x01", id="invalid-utf8"),
    pytest.param(b"\x01\xed\xa0\x80\x00\x01", id="utf8-surrogate"),
    pytest.param(b"\x03", id="unknown-tag"),
    pytest.param(b"\x00", id="zero-tag"),
    pytest.param(keys.encode_tuple(("ok", 1)) + b"\x09", id="trailing-garbage"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_tuples_raise_key_error(data: bytes) -> None:
    with pytest.raises(keys.KeyError_):
        keys.decode_tuple(data)


@pytest.mark.parametrize("data", [b"", b"\x99\x01a\x00\x01", b"\x7f"])
def test_malformed_keys_raise_key_error(data: bytes) -> None:
    with pytest.raises(keys.KeyError_):
        keys.parse(data)


def test_key_error_is_a_value_error() -> None:
    assert issubclass(keys.KeyError_, ValueError)


@SETTINGS
@given(st.binary(max_size=40))
def test_arbitrary_bytes_decode_canonically_or_raise_key_error(data: bytes) -> None:
    try:
        decoded = keys.decode_tuple(data)
    except keys.KeyError_:
        return
    # Every byte string that decodes is the one canonical encoding of what it decodes to.
    assert keys.encode_tuple(decoded) == data


@pytest.mark.parametrize(
    "element, error",
    [(-1, ValueError), (MAX_U64 + 1, ValueError), (True, TypeError), (1.5, TypeError),
     (b"x", TypeError), (None, TypeError)],
)
def test_unencodable_elements_are_rejected(element: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        keys.encode_tuple((element,))  # type: ignore[arg-type]
