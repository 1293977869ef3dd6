"""StackOwner (engine/taskgroups.py): the one ``async with`` of the objects that
own a task group, without a server."""

from __future__ import annotations

from contextlib import AsyncExitStack

import anyio
import pytest

from mxsync.engine.taskgroups import StackOwner


class _Owner(StackOwner):
    def __init__(self, *, fail_setup: bool = False, fail_task: bool = False) -> None:
        self.fail_setup = fail_setup
        self.fail_task = fail_task
        self.undone: list[str] = []

    async def _setup(self, stack: AsyncExitStack) -> None:
        stack.callback(self.undone.append, "first")
        if self.fail_setup:
            # Before the task group, as the owners check their room and login:
            # raised as it is (after it, anyio would wrap it).
            raise LookupError("setup failed")
        tg = await stack.enter_async_context(anyio.create_task_group())
        stack.callback(tg.cancel_scope.cancel)
        tg.start_soon(self._task)
        stack.callback(self.undone.append, "second")

    async def _closing(self, exc_type: type[BaseException] | None) -> None:
        self.undone.append(f"closing ({exc_type.__name__ if exc_type else 'clean'})")

    def _closed(self) -> None:
        self.undone.append("closed")

    async def _task(self) -> None:
        if self.fail_task:
            raise KeyError("task failed")
        await anyio.sleep_forever()


@pytest.mark.anyio
async def test_the_body_exception_leaves_the_block_unwrapped_and_everything_is_undone():
    owner = _Owner()
    with anyio.fail_after(5), pytest.raises(ValueError, match="body"):
        async with owner:
            assert owner._stack is not None
            raise ValueError("body")
    assert owner.undone == ["closing (ValueError)", "second", "first", "closed"]
    assert owner._stack is None


@pytest.mark.anyio
async def test_a_failed_setup_undoes_what_it_started_at_once():
    owner = _Owner(fail_setup=True)
    with anyio.fail_after(5), pytest.raises(LookupError):
        async with owner:
            pytest.fail("the body must not run")
    assert owner.undone == ["first"]  # never open: nothing to close
    assert owner._stack is None


@pytest.mark.anyio
async def test_a_background_task_failure_stays_an_exception_group():
    owner = _Owner(fail_task=True)
    with anyio.fail_after(5), pytest.raises(BaseExceptionGroup) as info:
        async with owner:
            await anyio.sleep_forever()
    assert info.group_contains(KeyError)


@pytest.mark.anyio
async def test_leaving_twice_unwinds_the_stack_once():
    owner = _Owner()
    with anyio.fail_after(5):
        async with owner:
            pass
    assert owner.undone == ["closing (clean)", "second", "first", "closed"]
    owner.undone.clear()
    assert await owner.__aexit__(None, None, None) is None
    assert owner._stack is None and "second" not in owner.undone
