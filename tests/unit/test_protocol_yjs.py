"""Yjs v1 byte helpers against what pycrdt itself produces."""

from __future__ import annotations

import pycrdt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mxsync.errors import ProtocolError
from mxsync.protocol.yjs import (
    DeleteSet,
    decode_state_vector,
    encode_state_vector,
    encode_varuint,
)


@settings(derandomize=True, max_examples=200)
@given(st.dictionaries(st.integers(0, 2**53 - 1), st.integers(0, 2**32), max_size=20))
def test_state_vector_round_trips(clocks):
    assert decode_state_vector(encode_state_vector(clocks)) == clocks


def test_state_vector_matches_pycrdt():
    doc = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    text += "hello"
    clocks = decode_state_vector(doc.get_state())
    assert clocks == {doc.client_id: 5}
    # A baseline that pycrdt accepts: the diff since it holds exactly the missing part.
    other = pycrdt.Doc()
    other.apply_update(doc.get_update(encode_state_vector({doc.client_id: 2})))
    assert str(other.get("t", type=pycrdt.Text)) == ""  # depends on the first 2, kept pending


@pytest.mark.parametrize("bad", [b"", b"\x02\x01", b"\x01\x01\x01\x00", b"\xff" * 11,
                                 b"\x05\x01\x01"])
def test_malformed_state_vectors_raise_protocol_error(bad):
    with pytest.raises(ProtocolError):
        decode_state_vector(bad)


def test_delete_set_merges_ranges_and_reads_pycrdt_delete_sets():
    doc = pycrdt.Doc()
    text = doc.get("t", type=pycrdt.Text)
    text += "abcdefgh"
    seen: list[bytes] = []
    doc.observe(lambda ev: seen.append(ev.delete_set))
    del text[1:3]
    del text[3:4]
    ds = DeleteSet()
    for raw in seen:
        ds.add(raw)
    assert ds
    assert ds.ranges[doc.client_id]
    merged = DeleteSet()
    merged.ranges = {7: [(0, 2), (2, 3), (10, 1)]}
    assert merged.encode() == b"".join(
        encode_varuint(x) for x in (1, 7, 2, 0, 5, 10, 1))
    ds.clear()
    assert not ds


def test_varuint_refuses_negative():
    with pytest.raises(ValueError):
        encode_varuint(-1)
    assert encode_varuint(300) == b"\xac\x02"
