"""The fleet's rooms, the parts without a server: group names, the createRoom
body of a shard, the alias namespace the registration reserves, the gateway's
arguments. Placement itself is tested against Synapse (test_fleet_gateway.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mxsync.errors import ConfigError, MatrixError
from mxsync.fleet.appservice import FleetGateway, Registration
from mxsync.fleet.rooms import FleetRooms, room_body, validate_group
from mxsync.protocol import api


def test_group_names_are_short_lowercase_words():
    assert validate_group("site-a") == "site-a"
    assert validate_group("line_3") == "line_3"
    for bad in ("", "Site", "a.b", "a/b", "x" * 65, 7):
        with pytest.raises(ConfigError, match="fleet group"):
            validate_group(bad)  # type: ignore[arg-type]


def test_a_shard_is_created_with_its_devices_invited_and_their_levels_set():
    body = room_body(name="site-a 1", alias_localpart="fleet_site-a.1",
                     invite=["@dev_a:hs", "@ops:hs"], levels={"@dev_a:hs": 50, "@ops:hs": 100})
    assert body["preset"] == "private_chat"
    assert body["room_alias_name"] == "fleet_site-a.1"
    assert body["invite"] == ["@dev_a:hs", "@ops:hs"]
    pl = body["power_level_content_override"]
    assert pl["users"] == {"@dev_a:hs": 50, "@ops:hs": 100}
    assert pl["events"]["org.mxsync.readings"] == 50
    assert pl["events"]["org.mxsync.device"] == 50
    assert pl["events"]["m.room.power_levels"] == 100
    assert pl["users_default"] == 0


def test_the_registration_reserves_the_fleet_rooms_aliases(tmp_path):
    reg = Registration.generate("example.org", sender_localpart="fleet")
    data = json.loads(reg.write(tmp_path / "r.yaml").read_text())
    assert data["namespaces"]["aliases"] == [
        {"exclusive": True, "regex": r"#fleet_.*:example\.org"}]
    rooms = FleetRooms(None, server_name="example.org",  # type: ignore[arg-type]
                       alias_prefix=reg.alias_prefix, user_prefix=reg.user_prefix,
                       room_size=50, operators={})
    assert rooms.alias("site-a", 2) == "#fleet_site-a.2:example.org"


def test_gateway_arguments_are_checked():
    reg = Registration.generate("example.org")
    for kw in ({"room_size": 0}, {"room_size": 2.5}, {"concurrency": 0},
               {"operators": {"@ops:hs": "100"}}, {"operators": ["ops"]}):
        with pytest.raises(ConfigError):
            FleetGateway(None, reg, **kw)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="not a room id"):
        FleetGateway(None, reg, "#alias:hs")  # type: ignore[arg-type]
    gw = FleetGateway(None, reg, operators=["@ops:hs"])  # type: ignore[arg-type]
    assert gw.rooms == [] and gw.groups() == {}
    with pytest.raises(ConfigError, match="was not added"):
        gw.room_of("boiler-1")
    one = FleetGateway(None, reg, "!room:hs")  # type: ignore[arg-type]
    assert one.room_of("anything") == "!room:hs" and one.rooms == ["!room:hs"]


class EncryptingHomeserver:
    """Answers FleetRooms' requests as a homeserver that encrypts every new room by
    default (Synapse's encryption_enabled_by_default_for_room_type: all), which a
    test Synapse started for one test only could show too, at ~5 s more."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def request(self, req: api.Request) -> dict[str, Any]:
        self.calls.append(req.what)
        if req.path.endswith("/createRoom"):
            return {"room_id": "!new:hs"}
        if "/state/m.room.encryption/" in req.path:
            return {"algorithm": "m.megolm.v1.aes-sha2"}
        if "/directory/room/" in req.path:
            raise MatrixError(404, "M_NOT_FOUND", "no such alias")
        raise AssertionError(f"unexpected {req.method} {req.path}")


@pytest.mark.anyio
async def test_a_shard_the_homeserver_encrypted_by_default_is_a_config_error():
    hs = EncryptingHomeserver()
    rooms = FleetRooms(hs, server_name="hs", alias_prefix="fleet_",  # type: ignore[arg-type]
                       user_prefix="dev_", room_size=50, operators={})
    with pytest.raises(ConfigError, match=r"made the new shard #fleet_g\.1:hs \(!new:hs\) "
                                          r"end-to-end encrypted.*encryption_enabled_by_default"):
        await rooms.place("g", ["@dev_a:hs"], 50)
    assert hs.calls == ["room alias", "create_room", "state event"]
