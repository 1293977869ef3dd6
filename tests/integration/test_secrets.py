"""Secrets never leak: not into logs (at DEBUG), exceptions, reprs or world-readable files."""

from __future__ import annotations

import logging
import os
import stat

import anyio
import pytest

from mxsync import Client, LoginError

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def test_no_token_or_password_in_debug_logs_reprs_or_errors(hs, make_user, tmp_path,
                                                                    caplog):
    caplog.set_level(logging.DEBUG)
    creds = await make_user("secret", relaxed=True)
    store = tmp_path / "s.db"
    async with Client(hs.url, creds.user_id, password=creds.password, store_path=store) as c:
        room = await c.create_room("s")
        await (await c.send(room, "org.mxsync.test", {"a": 1})).wait()
        token = c.http.access_token
        assert token
        texts = [repr(c), repr(creds), str(c.statistics())]
        with anyio.fail_after(30):
            await c.wait_synced()
    wrong = Client(hs.url, creds.user_id, password="hunter2-wrong")
    with pytest.raises(LoginError) as info:
        async with wrong:
            pass
    texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    for text in texts:
        assert token not in text
        assert creds.password not in text
        assert "hunter2-wrong" not in text
    for path in tmp_path.iterdir():
        if path.name.startswith("s.db"):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
