"""The fleet's pure parts: the appservice registration, device users, the
Sparkplug host's state machine (births, aliases, seq, bdSeq) on pysparkplug's codec."""

from __future__ import annotations

import json
import sqlite3

import pysparkplug as spb
import pytest

from mxsync.engine.outbox import OutboxEntry, insert_entries, pending_entries
from mxsync.engine.store import Store
from mxsync.fleet import sparkplug as sp
from mxsync.fleet.appservice import DeviceEngine, Registration, device_localpart
from mxsync.protocol.api import as_appservice, send_event

D = spb.DataType


def test_registration_round_trips_and_is_what_synapse_reads(tmp_path):
    reg = Registration.generate("example.org")
    path = reg.write(tmp_path / "reg.yaml")
    data = json.loads(path.read_text())
    assert data["rate_limited"] is False and data["url"] is None
    assert data["namespaces"]["users"] == [{"exclusive": True, "regex": r"@dev_.*:example\.org"}]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert Registration.load(path) == reg
    assert reg.user_id("Boiler 1") == "@dev_boiler=1:example.org"
    assert device_localpart("dev_", "site/a-1") == "dev_site/a-1"


def test_a_device_engine_sends_as_its_user_with_the_batch_time():
    engine = DeviceEngine(None, "@dev_a:hs")  # type: ignore[arg-type]
    entry = engine.new_entry("!r:hs", "org.mxsync.readings", {"t0_ms": 1234, "seq": 0})
    assert (entry.as_user, entry.ts_ms) == ("@dev_a:hs", 1234)
    req = entry.request()
    assert req.query == {"user_id": "@dev_a:hs", "ts": 1234}
    state = engine.new_entry("!r:hs", "org.mxsync.device", {"online": True}, state_key="a")
    assert state.request().query == {"user_id": "@dev_a:hs"}
    plain = OutboxEntry.new("!r:hs", "org.mxsync.readings", {"t0_ms": 1})
    assert plain.request().query is None
    assert as_appservice(send_event("!r:hs", "t", "x", {}), None) == send_event("!r:hs", "t",
                                                                              "x", {})


def birth(seq: int = 0, bd: int = 0) -> bytes:
    return spb.NBirth(timestamp=1000, seq=seq, metrics=(
        spb.Metric(timestamp=1000, name="bdSeq", datatype=D.INT64, value=bd),
        spb.Metric(timestamp=1000, name="Temp 1", datatype=D.FLOAT, value=21.3, alias=1),
    )).encode()


def ndata(seq: int, value: float) -> bytes:
    return spb.NData(timestamp=2000, seq=seq, metrics=(
        spb.Metric(timestamp=2000, name=None, datatype=D.FLOAT, value=value, alias=1),
    )).encode()


def test_births_aliases_and_float_metrics_become_readings():
    host = sp.SparkplugHost()
    assert host.receive("spBv1.0/G/NBIRTH/N", birth()) == [
        sp.Online("G/N", (("Temp_1", 1000, 21.3),))]
    assert host.receive("spBv1.0/G/NDATA/N", ndata(1, 22.7)) == [
        sp.Readings("G/N", (("Temp_1", 2000, 22.7),))]


def test_a_seq_gap_or_data_before_birth_asks_for_a_rebirth_and_takes_nothing():
    host = sp.SparkplugHost()
    assert host.receive("spBv1.0/G/NDATA/N", ndata(5, 1.0)) == [
        sp.Rebirth("G", "N", "NDATA before an NBIRTH")]
    host.receive("spBv1.0/G/NBIRTH/N", birth())
    assert host.receive("spBv1.0/G/NDATA/N", ndata(3, 1.0)) == [
        sp.Rebirth("G", "N", "seq 3, expected 1")]
    assert host.receive("spBv1.0/G/NDATA/N", ndata(4, 1.0)) == []  # asked once
    host.receive("spBv1.0/G/NBIRTH/N", birth())
    assert host.receive("spBv1.0/G/NDATA/N", ndata(1, 2.0))[0] == sp.Readings(
        "G/N", (("Temp_1", 2000, 2.0),))


def test_only_the_death_of_the_current_birth_counts():
    host = sp.SparkplugHost()
    host.receive("spBv1.0/G/NBIRTH/N", birth(bd=4))

    def death(bd: int) -> bytes:
        return spb.NDeath(timestamp=None, bd_seq_metric=spb.Metric(
            timestamp=None, name="bdSeq", datatype=D.INT64, value=bd)).encode()

    assert host.receive("spBv1.0/G/NDEATH/N", death(3)) == []  # a stale will
    assert host.receive("spBv1.0/G/NDEATH/N", death(4)) == [sp.Offline("G/N", "last-will")]


def test_malformed_payloads_are_counted_not_raised():
    host = sp.SparkplugHost()
    assert host.receive("spBv1.0/G/NBIRTH/N", b"\xff\x00garbage") == []
    assert host.receive("not/sparkplug", b"") == []
    assert host.malformed == 1


@pytest.mark.anyio
async def test_a_store_from_before_the_appservice_columns_keeps_its_outbox(tmp_path):
    """A store written before ``as_user``/``ts_ms`` existed: its pending entries are
    read back unchanged (sent as their own user) and new ones keep both fields."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id TEXT NOT NULL,"
            " event_type TEXT NOT NULL, state_key TEXT, content BLOB NOT NULL,"
            " txn_id TEXT NOT NULL UNIQUE, lane TEXT NOT NULL, created_ms INTEGER NOT NULL)")
        conn.execute("INSERT INTO outbox(room_id, event_type, state_key, content, txn_id, lane,"
                     " created_ms) VALUES ('!r:hs', 't', NULL, X'7B7D', 'old-1', 'default', 1)")
    store = Store(path)
    await store.open()
    try:
        entry = DeviceEngine(None, "@dev_a:hs").new_entry(  # type: ignore[arg-type]
            "!r:hs", "org.mxsync.readings", {"t0_ms": 7})
        await store.run(lambda c: insert_entries(c, [entry]))
        rows = await store.run(pending_entries)
    finally:
        await store.close()
    assert [(r.txn_id, r.as_user, r.ts_ms) for r in rows] == [
        ("old-1", None, None), (entry.txn_id, "@dev_a:hs", 7)]
    assert rows[0].request().query is None
