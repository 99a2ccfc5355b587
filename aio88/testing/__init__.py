"""Test kit: an 88API emulator on loopback and a pytest plugin.

::

    from aio88.testing import Emulator

    async with Emulator(dialect="newapi") as emu:
        async with Client(api_key=emu.api_key, base_url=emu.base_url) as client:
            task = await client.videos.create(prompt="a red fox")
            emu.complete(task.id)

With pytest, the ``aio88_emulator`` and ``aio88_client`` fixtures are ready to use (the
plugin registers itself when aio88 is installed). Start one by hand with
``aio88 emulator --port 8088 --dialect newapi`` (or ``python -m aio88.testing ...``).
"""

from ._callbacks import CallbackDelivery
from ._clock import ManualClock
from ._emulator import Emulator
from ._faults import CallbackFault, CallbackFaults, FaultKind, Faults
from ._lifecycle import EmulatedTask
from ._requests import LoggedRequest
from ._stats import EmulatorStats
from ._wire import Dialect

__all__ = [
    "CallbackDelivery",
    "CallbackFault",
    "CallbackFaults",
    "Dialect",
    "EmulatedTask",
    "Emulator",
    "EmulatorStats",
    "FaultKind",
    "Faults",
    "LoggedRequest",
    "ManualClock",
]

# Present every public name as aio88.testing.X (in reprs, tracebacks and docs), not
# aio88.testing._module.X.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("aio88.testing._"):
        _obj.__module__ = "aio88.testing"
del _name, _obj
