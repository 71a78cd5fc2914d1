"""``CommandPacker``: redis-py's commands turned into bytes by hiredis in one call.

redis-py (8.x) hands each command to hiredis only after encoding every argument in
Python: per argument a generator step, a type check for memoryview, and its
``Encoder.encode`` with three more checks. hiredis' ``pack_command`` does that
encoding itself, in C, for exactly the types redis-py accepts (``bytes``, ``str`` as
UTF-8, ``int``, ``float`` as ``repr``, ``memoryview``) and refuses the others. A job's
result transaction is about 35 commands and 200 arguments: measured, this packer
takes the CPU of packing it from 142 to 33 µs, and of the whole transaction (build,
pack, send, read) from 336 to 216 µs (``python -m benchmarks --only redis_packing``),
on the path of every job, in a process that shares two cores with the rest of the stack.

Bytes are identical to redis-py's (``tests/test_packing.py`` compares them for any
arguments hypothesis draws, and checks the same ``DataError`` for a ``bool`` or
``None``). Used by :func:`zimg_queue.connection.connect` when hiredis is installed
(``redis[hiredis]`` is a dependency); without it redis-py's own packer stays.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import DataError

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis comes with redis[hiredis]
    hiredis = None  # type: ignore[assignment]


class CommandPacker:
    """A ``command_packer`` for redis-py's ``Connection``: ``pack(*args)`` returns the command's bytes in a list."""

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        # redis-py sends a multi-word command name ("SCRIPT LOAD", "CLIENT SETNAME") as separate words.
        if isinstance(name, str):
            if " " in name:
                args = (*name.split(), *args[1:])
        elif isinstance(name, bytes | bytearray | memoryview) and b" " in bytes(name):
            args = (*bytes(name).split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]  # type: ignore[arg-type]  # (hiredis' stub types a 1-tuple)
        except TypeError:
            pass
        for arg in args:
            if isinstance(arg, bool) or not isinstance(arg, _PACKABLE):
                raise DataError(
                    f"Invalid input of type: '{type(arg).__name__}'. Convert to a bytes, string, int or float first."
                )
        sendable = tuple(bytes(a) if isinstance(a, bytearray) else a for a in args)
        return [hiredis.pack_command(sendable)]  # type: ignore[arg-type]


#: What redis-py accepts (a ``bytearray`` is sent as bytes; hiredis takes the rest as they are). Not ``bool``.
_PACKABLE = (bytes, bytearray, memoryview, str, int, float)


def command_packer() -> CommandPacker | None:
    """The packer to give redis-py's connections, or ``None`` (its own) when hiredis is not installed."""
    return CommandPacker() if hiredis is not None else None
