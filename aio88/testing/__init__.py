"""Test kit: an 88API emulator on loopback and a pytest plugin.

::

    from aio88.testing import Emulator

    async with Emulator(dialect="newapi") as emu:
        async with Client(api_key=emu.api_key, base_url=emu.base_url) as client:
            task = await client.videos.create(prompt="a red fox")
            emu.complete(task.id)

With pytest, the ``aio88_emulator`` and ``aio88_client`` fixtures are ready to use (the
plugin registers itself when aio88 is installed). Start one by hand with
``python -m aio88.testing --port 8088 --dialect newapi``.
"""

from __future__ import annotations

from ._emulator import EmulatedTask, Emulator, Faults, LoggedRequest, ManualClock

__all__ = ["EmulatedTask", "Emulator", "Faults", "LoggedRequest", "ManualClock"]
