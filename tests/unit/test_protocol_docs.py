"""The document wire protocol: codec, chunking, reassembly, validation, snapshot policy.

Pure tests: no homeserver, no event loop. Hypothesis runs derandomized.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from typing import Any

import msgspec
import pycrdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxsync.errors import ConfigError, ProtocolError
from mxsync.protocol import types
from mxsync.protocol.docs import (
    ENCODING_YJS_V1,
    MAX_DOC_NAME_BYTES,
    MAX_INLINE_SV_BYTES,
    MAX_PAYLOAD_BYTES,
    MIN_CHUNK_SLICE,
    ChunkAssembler,
    ChunkInfo,
    DocChunk,
    DocDeclaration,
    DocSnapshot,
    DocUpdate,
    SnapshotPolicy,
    content_size,
    decode_doc_event,
    decode_state_vector,
    encode_declaration,
    encode_snapshot,
    encode_update,
    state_vector_covers,
    validate_update,
)

FAST = settings(
    derandomize=True,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def assert_within_budget(contents: list[dict[str, Any]]) -> None:
    for content in contents:
        compact = json.dumps(content, separators=(",", ":"), ensure_ascii=False)
        assert len(compact.encode()) == content_size(content) <= types.MAX_CONTENT_BYTES


def reassemble(
    event_type: str,
    contents: list[dict[str, Any]],
    order: list[int] | None = None,
    assembler: ChunkAssembler | None = None,
    sender: str = "@a:x",
) -> DocUpdate | DocSnapshot | None:
    assembler = assembler or ChunkAssembler()
    order = list(range(len(contents))) if order is None else order
    result = None
    for i in order:
        decoded = decode_doc_event(event_type, contents[i])
        if not isinstance(decoded, DocChunk):
            assert len(contents) == 1
            return decoded  # type: ignore[return-value]
        out = assembler.feed(f"$e{i}", sender, decoded)
        if out is not None:
            assert result is None, "a set completed twice"
            result = out
    return result


def single_event_capacity(doc: str) -> int:
    lo, hi = 1, types.MAX_CONTENT_BYTES
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(encode_update(doc, bytes(mid))) == 1 else (lo, mid - 1)
    return lo


def varuint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def make_chunk(
    *,
    i: int,
    n: int,
    size: int,
    cid: str = "set",
    sha256: str = "0" * 64,
    doc: str = "d",
    fill: int = 0,
) -> DocChunk:
    info = ChunkInfo(id=cid, index=i, count=n, size=size, sha256=sha256)
    return DocChunk(kind="update", doc=doc, chunk=info, data=bytes([fill]) * info.slice_length)


def big_pycrdt_doc(min_bytes: int) -> pycrdt.Doc[Any]:
    rnd = random.Random(1)
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=7)
    doc["text"] = text = pycrdt.Text()
    doc["items"] = items = pycrdt.Array[Any]()
    while len(doc.get_update()) < min_bytes:
        for _ in range(300):
            text.insert(rnd.randint(0, len(text)), rnd.choice("abcdefgh "))
        items.append({"n": len(items), "label": "x" * rnd.randint(1, 40)})
    return doc


# ---------------------------------------------------------------------- shapes


def test_small_update_is_one_event_with_the_documented_shape() -> None:
    [content] = encode_update("notes", b"\x01\x02\x03")
    assert content == {"v": 1, "doc": "notes", "update": "AQID"}
    assert decode_doc_event(types.DOC_UPDATE, content) == DocUpdate(doc="notes", update=b"\1\2\3")


def test_declaration_round_trips_and_unknown_encoding_is_decoded_but_unsupported() -> None:
    content = encode_declaration()
    assert content == {"v": 1, "encoding": "yjs-v1"}
    decl = decode_doc_event(types.DOC, content)
    assert decl == DocDeclaration(encoding=ENCODING_YJS_V1) and decl.supported
    other = decode_doc_event(types.DOC, {"v": 1, "encoding": "automerge"})
    assert isinstance(other, DocDeclaration) and not other.supported


def test_snapshot_round_trips_with_all_fields() -> None:
    [content] = encode_snapshot("d", b"\x00\x00", b"\x00", "$ev1", updates_since=12)
    assert content == {
        "v": 1,
        "doc": "d",
        "state": "AAA=",
        "sv": "AA==",
        "covers": "$ev1",
        "updates_since": 12,
    }
    snap = decode_doc_event(types.DOC_SNAPSHOT, content)
    assert snap == DocSnapshot(doc="d", state=b"\0\0", sv=b"\0", covers="$ev1", updates_since=12)


def test_newer_minor_fields_are_ignored_and_null_optionals_are_absent() -> None:
    content = {"v": 1, "doc": "d", "update": "AQID", "future": {"x": [1, 2]}}
    assert decode_doc_event(types.DOC_UPDATE, content) == DocUpdate(doc="d", update=b"\1\2\3")
    snap = {"v": 1, "doc": "d", "state": "AAA=", "sv": None, "covers": None}
    assert decode_doc_event(types.DOC_SNAPSHOT, snap) == DocSnapshot(doc="d", state=b"\0\0")


@pytest.mark.parametrize("v", [0, 2, 99, True, "1", 1.0, None])
def test_other_major_versions_are_refused(v: object) -> None:
    with pytest.raises(ProtocolError):
        decode_doc_event(types.DOC_UPDATE, {"v": v, "doc": "d", "update": "AQID"})
    with pytest.raises(ProtocolError):
        decode_doc_event(types.DOC, {"v": v, "encoding": "yjs-v1"})


@pytest.mark.parametrize(
    "content",
    [
        {},  # a redacted event
        {"v": 1, "doc": "d"},
        {"v": 1, "doc": "d", "update": ""},  # empty update
        {"v": 1, "doc": "d", "update": "AQI"},  # unpadded base64
        {"v": 1, "doc": "d", "update": "AQ-_"},  # url-safe alphabet
        {"v": 1, "doc": "d", "update": "AQ ID"},
        {"v": 1, "doc": "", "update": "AQID"},
        {"v": 1, "doc": "x" * (MAX_DOC_NAME_BYTES + 1), "update": "AQID"},
        {"v": 1, "doc": 5, "update": "AQID"},
        {"v": 1, "doc": "\ud800", "update": "AQID"},  # a lone surrogate
        {"v": 1, "doc": "d", "update": "AQID", "chunk": {"id": "c"}},
        [],
        None,
        "text",
    ],
)
def test_malformed_updates_raise_protocol_error(content: object) -> None:
    with pytest.raises(ProtocolError):
        decode_doc_event(types.DOC_UPDATE, content)


@pytest.mark.parametrize(
    "extra",
    [
        {"sv": "AQ=="},  # announces one client, has none
        {"sv": "AAA="},  # trailing byte
        {"covers": "not-an-event-id"},
        {"updates_since": -1},
        {"updates_since": 2**53},
        {"state": ""},
    ],
)
def test_malformed_snapshots_raise_protocol_error(extra: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError):
        decode_doc_event(types.DOC_SNAPSHOT, {"v": 1, "doc": "d", "state": "AAA="} | extra)


def test_unknown_event_type_raises_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode_doc_event("m.room.message", {"v": 1, "doc": "d", "update": "AQID"})


def test_encoders_refuse_bad_arguments_with_config_error() -> None:
    with pytest.raises(ConfigError):
        encode_update("d", b"")
    with pytest.raises(ConfigError):
        encode_update("", b"x")
    with pytest.raises(ConfigError):
        encode_update("é" * 128, b"x")  # 256 UTF-8 bytes
    with pytest.raises(ConfigError):
        encode_snapshot("d", b"\0\0", b"\0", covers="oops")
    with pytest.raises(ConfigError):
        encode_snapshot("d", b"\0\0", b"\x05")
    with pytest.raises(ConfigError):
        encode_update("d", bytes(MAX_PAYLOAD_BYTES + 1))
    with pytest.raises(ConfigError):
        encode_update("d", bytes(100_000), chunk_id="")


# -------------------------------------------------------------------- chunking


def test_payload_just_over_one_event_splits_into_two_balanced_chunks() -> None:
    for doc in ("d", "é" * (MAX_DOC_NAME_BYTES // 2)):
        capacity = single_event_capacity(doc)
        assert capacity > 42_000
        [whole] = encode_update(doc, payload(capacity))
        assert_within_budget([whole])
        chunks = encode_update(doc, payload(capacity + 1))
        assert len(chunks) == 2
        assert_within_budget(chunks)
        lengths = [len(base64.b64decode(c["update"])) for c in chunks]
        assert lengths == [(capacity + 2) // 2, (capacity + 1) // 2]


@FAST
@given(size=st.integers(1, 300_000), seed=st.integers(0, 2**16))
def test_chunking_round_trips_and_every_content_fits(size: int, seed: int) -> None:
    data = payload(size, seed)
    contents = encode_update("doc/é", data)
    assert_within_budget(contents)
    assert {len(c["update"]) for c in contents[:-1]} <= {len(contents[0]["update"])}
    order = list(range(len(contents)))
    random.Random(seed).shuffle(order)
    assert reassemble(types.DOC_UPDATE, contents, order) == DocUpdate(doc="doc/é", update=data)


@FAST
@given(
    n_bytes=st.integers(50_000, 400_000),
    order=st.lists(st.integers(0, 9), min_size=1, max_size=40),
)
def test_chunks_in_any_order_with_duplicates_reassemble_once(
    n_bytes: int, order: list[int]
) -> None:
    data = payload(n_bytes)
    contents = encode_update("d", data)
    n = len(contents)
    feed = [i % n for i in order] + list(range(n))  # whatever came first, all arrive
    assembler = ChunkAssembler()
    assert reassemble(types.DOC_UPDATE, contents, feed, assembler) == DocUpdate(
        doc="d", update=data
    )
    assert assembler.pending_sets == 0 and assembler.pending_bytes == 0
    stats = assembler.statistics()
    assert stats.completed == 1 and stats.duplicates == len(feed) - n


def test_300kb_pycrdt_state_split_reassembled_and_applied_equals_the_original() -> None:
    original = big_pycrdt_doc(300_000)
    state, sv = original.get_update(), original.get_state()
    assert len(state) >= 300_000
    contents = encode_snapshot("board", state, sv, "$last", updates_since=30)
    assert len(contents) > 1
    assert_within_budget(contents)
    assert all(c["chunk"]["n"] == len(contents) for c in contents)
    snap = reassemble(types.DOC_SNAPSHOT, contents, list(reversed(range(len(contents)))))
    assert isinstance(snap, DocSnapshot)
    assert (snap.sv, snap.covers, snap.updates_since) == (sv, "$last", 30)
    copy: pycrdt.Doc[Any] = pycrdt.Doc()
    copy.apply_update(snap.state)
    assert str(copy.get("text", type=pycrdt.Text)) == str(original["text"])
    assert copy.get("items", type=pycrdt.Array).to_py() == original["items"].to_py()
    assert copy.get_state() == sv


def test_snapshot_chunks_all_carry_the_snapshot_fields() -> None:
    contents = encode_snapshot("d", payload(100_000), b"\x01\x05\x09", "$c", chunk_id="fixed")
    decoded = [decode_doc_event(types.DOC_SNAPSHOT, c) for c in contents]
    assert all(isinstance(d, DocChunk) and d.kind == "snapshot" for d in decoded)
    assert {(d.sv, d.covers, d.chunk.id) for d in decoded} == {(b"\x01\x05\x09", "$c", "fixed")}  # type: ignore[union-attr]
    assert all(d.event_type == types.DOC_SNAPSHOT for d in decoded)  # type: ignore[union-attr]


def test_a_huge_state_vector_is_left_out_of_the_snapshot() -> None:
    clients = 3000
    sv = varuint(clients) + b"".join(varuint(2**31 + i) + varuint(i) for i in range(clients))
    assert len(decode_state_vector(sv)) == clients and len(sv) > MAX_INLINE_SV_BYTES
    contents = encode_snapshot("d", payload(200_000), sv)
    assert all("sv" not in c for c in contents)
    assert_within_budget(contents)


def test_chunk_ids_are_random() -> None:
    ids = {encode_update("d", payload(60_000))[0]["chunk"]["id"] for _ in range(50)}
    assert len(ids) == 50


# ---------------------------------------------------------- reassembly guards


def test_an_incomplete_set_never_yields() -> None:
    contents = encode_update("d", payload(200_000))
    for missing in range(len(contents)):
        others = [i for i in range(len(contents)) if i != missing]
        assembler = ChunkAssembler()
        assert reassemble(types.DOC_UPDATE, contents, others * 2, assembler) is None
        assert assembler.pending_sets == 1
        assert assembler.statistics().completed == 0


def test_digest_mismatch_discards_the_set_for_good() -> None:
    contents = encode_update("d", payload(100_000), chunk_id="bad")
    for c in contents:
        c["chunk"]["sha256"] = hashlib.sha256(b"something else").hexdigest()
    assembler = ChunkAssembler()
    assert reassemble(types.DOC_UPDATE, contents, None, assembler) is None
    assert assembler.statistics().discarded == 1 and assembler.pending_sets == 0
    assert reassemble(types.DOC_UPDATE, contents, None, assembler) is None  # replayed
    assert assembler.pending_sets == 0


def test_a_tampered_slice_fails_the_digest() -> None:
    contents = encode_update("d", payload(100_000))
    raw = bytearray(base64.b64decode(contents[1]["update"]))
    raw[0] ^= 1
    contents[1]["update"] = base64.b64encode(raw).decode()
    assert reassemble(types.DOC_UPDATE, contents) is None


def test_chunks_that_disagree_on_their_set_discard_it() -> None:
    contents = encode_update("d", payload(100_000), chunk_id="x")
    contents[1]["doc"] = "other"
    assembler = ChunkAssembler()
    assert reassemble(types.DOC_UPDATE, contents, None, assembler) is None
    assert assembler.statistics().discarded == 1


def test_one_sender_cannot_complete_or_spoil_another_senders_set() -> None:
    good = encode_update("d", payload(100_000, 1), chunk_id="same")
    forged = encode_update("d", payload(100_000, 2), chunk_id="same")
    assembler = ChunkAssembler()
    a = [decode_doc_event(types.DOC_UPDATE, c) for c in good]
    m = [decode_doc_event(types.DOC_UPDATE, c) for c in forged]
    assert assembler.feed("$a0", "@alice:x", a[0]) is None  # type: ignore[arg-type]
    for i, chunk in enumerate(m[1:], 1):
        assert assembler.feed(f"$m{i}", "@mallory:x", chunk) is None  # type: ignore[arg-type]
    results = [assembler.feed(f"$a{i}", "@alice:x", c) for i, c in enumerate(a[1:], 1)]  # type: ignore[arg-type]
    assert results[-1] == DocUpdate(doc="d", update=payload(100_000, 1))


@pytest.mark.parametrize(
    "chunk",
    [
        {"id": "c", "i": 0, "n": 0, "bytes": 10, "sha256": "0" * 64},
        {"id": "c", "i": 3, "n": 3, "bytes": 9000, "sha256": "0" * 64},
        {"id": "c", "i": -1, "n": 3, "bytes": 9000, "sha256": "0" * 64},
        {"id": "c", "i": 0, "n": 3, "bytes": 2, "sha256": "0" * 64},
        {"id": "c", "i": 0, "n": 3, "bytes": 3 * MIN_CHUNK_SLICE - 3, "sha256": "0" * 64},
        {"id": "c", "i": 0, "n": 2, "bytes": 2**60, "sha256": "0" * 64},
        {"id": "c", "i": 0, "n": 2, "bytes": 9000, "sha256": "AB" * 32},
        {"id": "c", "i": 0, "n": 2, "bytes": 9000, "sha256": "0" * 63},
        {"id": "", "i": 0, "n": 2, "bytes": 9000, "sha256": "0" * 64},
        {"id": "c" * 65, "i": 0, "n": 2, "bytes": 9000, "sha256": "0" * 64},
        {"id": "c", "i": 0, "n": 2, "bytes": 9001, "sha256": "0" * 64},  # slice is 4501
    ],
)
def test_impossible_chunk_announcements_raise_protocol_error(chunk: dict[str, Any]) -> None:
    content = {"v": 1, "doc": "d", "chunk": chunk, "update": base64.b64encode(bytes(4500)).decode()}
    with pytest.raises(ProtocolError):
        decode_doc_event(types.DOC_UPDATE, content)


def test_absurd_announcements_are_rejected_and_hold_nothing() -> None:
    assembler = ChunkAssembler(max_payload_bytes=1 << 20, max_chunks=100, max_pending_bytes=1 << 21)
    too_many = make_chunk(i=0, n=101, size=101 * MIN_CHUNK_SLICE)
    too_big = make_chunk(i=0, n=2, size=(1 << 20) + 2)
    assert assembler.feed("$1", "@m:x", too_many) is None
    assert assembler.feed("$2", "@m:x", too_big) is None
    assert assembler.statistics().rejected == 2
    assert assembler.pending_sets == 0 and assembler.pending_bytes == 0
    with pytest.raises(ConfigError):
        ChunkAssembler(max_payload_bytes=10, max_pending_bytes=5)


bogus_chunk = st.builds(
    lambda sender, cid, n, extra, i, fill: (
        sender,
        make_chunk(cid=cid, n=n, i=i % n, size=n * MIN_CHUNK_SLICE + extra, fill=fill),
    ),
    sender=st.sampled_from(["@a:x", "@b:x", "@c:x", "@d:x"]),
    cid=st.text("abcdefgh", min_size=1, max_size=3),
    n=st.integers(1, 8),
    extra=st.integers(0, 5000),
    i=st.integers(0, 7),
    fill=st.integers(0, 1),
)


@settings(FAST, max_examples=150)
@given(flood=st.lists(bogus_chunk, max_size=120))
def test_memory_stays_bounded_under_a_flood_of_bogus_sets(
    flood: list[tuple[str, DocChunk]],
) -> None:
    limits = {"max_pending_bytes": 40_000, "max_pending_sets": 6, "max_sets_per_sender": 3}
    assembler = ChunkAssembler(max_payload_bytes=40_000, **limits)
    for k, (sender, chunk) in enumerate(flood):
        out = assembler.feed(f"$f{k}", sender, chunk)
        assert out is None  # all-zero digests never match
        assert assembler.pending_bytes <= limits["max_pending_bytes"]
        assert assembler.pending_sets <= limits["max_pending_sets"]
        held = assembler._sets_of  # per-sender counts: an internal, checked on purpose
        assert all(count <= limits["max_sets_per_sender"] for count in held.values())
        assert sum(p.held for p in assembler._sets.values()) == assembler.pending_bytes


def test_a_flooding_sender_evicts_its_own_sets_not_others() -> None:
    real = encode_update("d", payload(120_000), chunk_id="real")
    decoded = [decode_doc_event(types.DOC_UPDATE, c) for c in real]
    assembler = ChunkAssembler(
        max_payload_bytes=200_000, max_pending_bytes=300_000, max_pending_sets=8
    )
    assert assembler.feed("$r0", "@alice:x", decoded[0]) is None  # type: ignore[arg-type]
    for k in range(200):
        bogus = make_chunk(cid=f"b{k}", i=0, n=4, size=160_000)
        assembler.feed(f"$b{k}", "@mallory:x", bogus)
        assert assembler.pending_bytes <= 300_000
    out = [assembler.feed(f"$r{i}", "@alice:x", c) for i, c in enumerate(decoded[1:], 1)]  # type: ignore[arg-type]
    assert out[-1] == DocUpdate(doc="d", update=payload(120_000))
    assert assembler.statistics().evicted > 0


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_values = json_values | st.sampled_from(["AQID", "", "$e", "0" * 64, 1, 0, -1, 2**53])
chunk_dicts = st.fixed_dictionaries(
    {},
    optional={k: field_values for k in ("id", "i", "n", "bytes", "sha256")},
)
doc_contents = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 1, 2, "1", True]) | json_values,
        "doc": st.sampled_from(["d", ""]) | json_values,
        "update": field_values,
        "state": field_values,
        "sv": st.sampled_from(["AA==", "AQ==", "AQUJ"]) | field_values,
        "covers": field_values,
        "updates_since": field_values,
        "encoding": field_values,
        "chunk": chunk_dicts | json_values,
    },
)


@settings(FAST, max_examples=400)
@given(
    event_type=st.sampled_from([types.DOC, types.DOC_UPDATE, types.DOC_SNAPSHOT, "x"]),
    content=doc_contents | json_values,
)
def test_garbage_contents_only_ever_raise_protocol_error(event_type: str, content: Any) -> None:
    try:
        decoded = decode_doc_event(event_type, content)
    except ProtocolError:
        return
    assert isinstance(decoded, DocDeclaration | DocUpdate | DocSnapshot | DocChunk)


@settings(FAST, max_examples=200)
@given(data=st.binary(max_size=300))
def test_garbage_update_bytes_are_refused_or_valid(data: bytes) -> None:
    try:
        validate_update(data)
    except ProtocolError:
        return
    pycrdt.Doc().apply_update(data)  # what validate accepts, pycrdt applies


# ------------------------------------------------------------------- validation


def sample_update() -> bytes:
    doc: pycrdt.Doc[Any] = pycrdt.Doc(client_id=3)
    doc["t"] = pycrdt.Text("hello world")
    return doc.get_update()


def test_validate_accepts_real_updates() -> None:
    validate_update(sample_update())
    validate_update(big_pycrdt_doc(50_000).get_update())
    validate_update(b"\x00\x00")  # the empty Yjs update is valid (and useless)


@pytest.mark.parametrize(
    "garbage",
    [b"", b"\x00", b"garbage!", bytes(range(1, 256)), b"\xff\xff\xff\xff\x0f"],
)
def test_validate_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        validate_update(garbage)


def test_validate_refuses_truncated_updates() -> None:
    update = sample_update()
    for cut in range(len(update)):
        with pytest.raises(ProtocolError):
            validate_update(update[:cut])


def test_pycrdt_ignores_trailing_bytes_after_an_update() -> None:
    # Observed pycrdt 0.14.13 behaviour, documented in the spec; if it changes, update both.
    validate_update(sample_update() + b"junk")
    # 0 structs, a delete set of 1 client with 2 ranges, then 249 bytes nobody reads:
    validate_update(bytes(range(256)))


# Found by mutating a real update (client ids fixed): it decodes, applies cleanly to an
# empty doc, but fails to integrate against BASE, after applying part of itself.
BASE = bytes.fromhex("010301000701016101280001000171017c3f8000008801000177017800")
BAD_DIFF = bytes.fromhex("0103020088010201770179280001020172017c400000008802000177017a00")


def test_an_update_that_fails_against_the_real_state_is_caught_only_with_base() -> None:
    validate_update(BAD_DIFF)  # an empty scratch doc keeps it pending
    with pytest.raises(ProtocolError):
        validate_update(BAD_DIFF, base=BASE)
    real: pycrdt.Doc[Any] = pycrdt.Doc()
    real.apply_update(BASE)
    with pytest.raises(RuntimeError):
        real.apply_update(BAD_DIFF)
    # pycrdt applied the first struct ("y") before failing: apply_update is not atomic.
    assert real.get("a", type=pycrdt.Array).to_py() == [{"q": 1.0}, "x", "y"]


# ---------------------------------------------------------------- state vectors


def test_state_vector_decoding_matches_pycrdt() -> None:
    a: pycrdt.Doc[Any] = pycrdt.Doc(client_id=2**40 + 5)
    a["t"] = text = pycrdt.Text("abc")
    b: pycrdt.Doc[Any] = pycrdt.Doc(client_id=300)
    b.apply_update(a.get_update())
    b.get("t", type=pycrdt.Text).insert(0, "xy")
    a.apply_update(b.get_update())
    text += "d"
    assert decode_state_vector(a.get_state()) == {2**40 + 5: 4, 300: 2}
    assert decode_state_vector(pycrdt.Doc().get_state()) == {}


def test_state_vector_covers_follows_pycrdt_documents() -> None:
    a: pycrdt.Doc[Any] = pycrdt.Doc(client_id=1)
    a["t"] = text_a = pycrdt.Text("hello")
    b: pycrdt.Doc[Any] = pycrdt.Doc(client_id=2)
    b.apply_update(a.get_update())
    assert state_vector_covers(a.get_state(), b.get_state())
    assert state_vector_covers(b.get_state(), a.get_state())
    text_a += "!"
    assert state_vector_covers(a.get_state(), b.get_state())
    assert not state_vector_covers(b.get_state(), a.get_state())
    b.get("t", type=pycrdt.Text).insert(0, ">")
    assert not state_vector_covers(a.get_state(), b.get_state())
    assert not state_vector_covers(b.get_state(), a.get_state())
    merged: pycrdt.Doc[Any] = pycrdt.Doc(client_id=3)
    merged.apply_update(a.get_update())
    merged.apply_update(b.get_update())
    assert state_vector_covers(merged.get_state(), a.get_state())
    assert state_vector_covers(merged.get_state(), b.get_state())
    assert state_vector_covers(a.get_state(), pycrdt.Doc().get_state())


def test_state_vectors_ignore_deletions() -> None:
    a: pycrdt.Doc[Any] = pycrdt.Doc(client_id=1)
    a["t"] = text = pycrdt.Text("hello")
    before = a.get_state()
    del text[0:2]
    assert state_vector_covers(before, a.get_state())  # documented limit


@pytest.mark.parametrize(
    "sv",
    [b"", b"\x01", b"\x01\x05", b"\x00\x00", b"\x02\x01\x01", b"\x01" + b"\xff" * 11 + b"\x00"],
)
def test_malformed_state_vectors_raise_protocol_error(sv: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_state_vector(sv)
    with pytest.raises(ProtocolError):
        state_vector_covers(sv, b"\x00")


@FAST
@given(st.binary(max_size=64))
def test_state_vector_garbage_only_raises_protocol_error(sv: bytes) -> None:
    try:
        decode_state_vector(sv)
    except ProtocolError:
        pass


# -------------------------------------------------------------- snapshot policy


def test_policy_waits_for_updates_then_fires_at_its_jittered_threshold() -> None:
    policy = SnapshotPolicy("@alice:example.org", every_updates=50)
    assert not policy.should_snapshot()
    max_updates, _ = policy.thresholds()
    assert 50 <= max_updates < 75
    for _ in range(max_updates - 1):
        policy.observe_update(100)
    assert not policy.should_snapshot()
    policy.observe_update(100)
    assert policy.should_snapshot()
    policy.observe_snapshot()
    assert not policy.should_snapshot() and policy.updates_since == 0


def test_policy_jitter_is_deterministic_and_spreads_clients() -> None:
    factors = [SnapshotPolicy(f"@user{i}:x").factor for i in range(200)]
    assert factors == [SnapshotPolicy(f"@user{i}:x").factor for i in range(200)]
    assert all(1 <= f < 1.5 for f in factors)
    assert len({SnapshotPolicy(f"@user{i}:x").thresholds()[0] for i in range(200)}) >= 20
    assert SnapshotPolicy("@a:x", jitter=0).thresholds() == (50, 256 * 1024)


def test_policy_fires_on_bytes_before_count() -> None:
    policy = SnapshotPolicy("@a:x", every_updates=50, every_bytes=10_000, jitter=0)
    policy.observe_update(6_000)
    assert not policy.should_snapshot()
    policy.observe_update(4_000)
    assert policy.should_snapshot()


def test_policy_scales_with_the_cost_of_a_snapshot() -> None:
    policy = SnapshotPolicy("@a:x", every_updates=50, every_bytes=10_000, jitter=0)
    for _ in range(60):
        policy.observe_update(10)
    assert policy.should_snapshot(state_bytes=40_000)  # one event
    assert not policy.should_snapshot(state_bytes=400_000)  # ten events: wait for 500
    assert policy.thresholds(400_000) == (500, 400_000)


def test_policy_refuses_nonsense_settings() -> None:
    with pytest.raises(ConfigError):
        SnapshotPolicy("@a:x", every_updates=0)
    with pytest.raises(ConfigError):
        SnapshotPolicy("@a:x", jitter=-1)


def test_value_objects_encode_with_msgspec() -> None:
    # The engine may persist decoded events with msgspec; wire names survive.
    info = ChunkInfo(id="c", index=0, count=1, size=3, sha256="0" * 64)
    assert msgspec.to_builtins(info) == {"id": "c", "i": 0, "n": 1, "bytes": 3, "sha256": "0" * 64}
