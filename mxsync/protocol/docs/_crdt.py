"""The checks that consult the CRDT rather than the schema.

Owns :func:`state_vector_covers` (comparing Yjs state vectors) and
:func:`validate_update`, the check of invariant 5 that applies a payload to a
scratch ``pycrdt.Doc``. pycrdt (which imports anyio) is imported lazily, by
:func:`validate_update` only.
"""

from __future__ import annotations

from typing import Any

from ...errors import ConfigError, ProtocolError
from ..yjs import decode_state_vector


def state_vector_covers(sv_a: bytes, sv_b: bytes) -> bool:
    """Whether state vector ``a`` includes every struct state vector ``b`` includes.

    State vectors count inserted structs, not deletions: a state covering another's
    state vector can still miss a deletion. Use it to skip a snapshot that brings no
    new inserts, not to prove that two documents are equal.
    """
    a = decode_state_vector(sv_a)
    return all(a.get(client, 0) >= clock for client, clock in decode_state_vector(sv_b).items())


def validate_update(update: bytes, *, base: bytes | None = None) -> None:
    """Raise ProtocolError unless ``update`` applies cleanly as a Yjs v1 update.

    The update is applied to a scratch ``pycrdt.Doc``, never to a real one. With
    ``base`` (the full state of the document it is meant for, ``doc.get_update()``)
    the scratch starts from that state, which also catches the updates that decode
    but fail to integrate against it (pycrdt raises RuntimeError then, *after*
    applying part of the update). Measured costs and pycrdt's behaviour with garbage:
    docs/PROTOCOL.md, "Validating payloads".
    """
    if not update:
        raise ProtocolError("update is empty")
    import pycrdt  # lazy: pycrdt imports anyio, and most of this package needs neither

    scratch: pycrdt.Doc[Any] = pycrdt.Doc()
    if base is not None:
        try:
            scratch.apply_update(base)
        except Exception as e:
            raise ConfigError(f"base is not a valid Yjs update: {e}") from None
    try:
        scratch.apply_update(update)
    except Exception as e:
        raise ProtocolError(f"not a valid Yjs v1 update: {e}") from None
    except BaseException as e:
        # pyo3 turns a Rust panic into PanicException, a BaseException: garbage, too.
        if type(e).__name__ != "PanicException":
            raise
        raise ProtocolError(f"Yjs update made pycrdt panic: {e}") from None
