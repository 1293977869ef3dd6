"""The short form of document updates (PROTOCOL.md section 2, ``yjs-v1-short``):
what it looks like, that readers take both forms, and where writers keep the long one."""

from __future__ import annotations

import base64

import pycrdt
import pytest

from mxsync.errors import ProtocolError
from mxsync.protocol import docs as proto
from mxsync.protocol.types import DOC, DOC_UPDATE


def _one_char_update(client_id: int) -> bytes:
    doc: pycrdt.Doc = pycrdt.Doc(client_id=client_id)
    text = doc.get("t", type=pycrdt.Text)
    text += "a"
    sv = doc.get_state()
    text += "x"
    return doc.get_update(sv)


def test_short_form_of_the_default_document_has_only_the_payload():
    update = _one_char_update(2**32 - 5)
    (content,) = proto.encode_update("default", update, short=True)
    assert content == {"u": base64.b64encode(update).decode()}
    # One typed character by a 32-bit client: 18 payload bytes, 32 content bytes
    # (Matrix-CRDT's {"update": ...} of the same payload takes 37).
    assert len(update) == 18 and proto.content_size(content) == 32
    decoded = proto.decode_doc_event(DOC_UPDATE, content)
    assert decoded == proto.DocUpdate(doc="default", update=update)
    assert proto.doc_of(content) == "default"


def test_short_form_of_a_named_document_names_it_in_d():
    update = _one_char_update(7)
    (content,) = proto.encode_update("notes", update, short=True)
    assert content == {"d": "notes", "u": base64.b64encode(update).decode()}
    assert proto.decode_doc_event(DOC_UPDATE, content) == proto.DocUpdate(doc="notes",
                                                                          update=update)
    assert proto.doc_of(content) == "notes"


def test_readers_keep_taking_the_long_form():
    update = _one_char_update(7)
    (long,) = proto.encode_update("notes", update)
    assert long == {"v": 1, "doc": "notes", "update": base64.b64encode(update).decode()}
    assert proto.decode_doc_event(DOC_UPDATE, long) == proto.DocUpdate(doc="notes",
                                                                       update=update)
    assert proto.doc_of(long) == "notes"


def test_a_payload_too_large_for_one_event_is_chunked_in_the_long_form():
    big = bytes(range(256)) * 300  # 76,800 bytes: more than one event holds
    contents = proto.encode_update("default", big, short=True)
    assert len(contents) > 1
    assert all(c["v"] == 1 and c["doc"] == "default" and "chunk" in c for c in contents)


@pytest.mark.parametrize("content", [
    {"u": ""},                                  # empty payload
    {"u": "AQ=="[:3]},                          # not padded base64
    {"u": "AAAA", "v": 2},                      # unknown major version
    {"u": "AAAA", "d": ""},                     # empty name
    {"u": "AAAA", "d": 5},                      # not a string
    {"u": "AAAA", "chunk": {"id": "x", "i": 0, "n": 1, "bytes": 3, "sha256": "0" * 64}},
])
def test_malformed_short_forms_are_refused(content):
    with pytest.raises(ProtocolError):
        proto.decode_doc_event(DOC_UPDATE, content)


def test_the_declaration_of_short_form_documents():
    content = proto.encode_declaration(proto.ENCODING_YJS_V1_SHORT)
    assert content == {"v": 1, "encoding": "yjs-v1-short"}
    decl = proto.decode_doc_event(DOC, content)
    assert isinstance(decl, proto.DocDeclaration) and decl.supported and decl.short
    old = proto.decode_doc_event(DOC, proto.encode_declaration())
    assert isinstance(old, proto.DocDeclaration) and old.supported and not old.short
