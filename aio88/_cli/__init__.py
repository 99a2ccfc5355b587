"""The ``aio88`` command.

``aio88 demo`` runs the whole job against an emulator in this process; ``aio88 run`` is
the crash-safe batch tool for the real API; ``create``, ``status``, ``wait`` and
``download`` handle one task; ``emulator`` serves an emulated 88API.

Exit codes: 0 every task ok, 1 some tasks failed or not settled, 2 a usage or
configuration error, 130 interrupted (143 for SIGTERM).
"""

from ._main import main

__all__ = ["main"]
