"""``CommandPacker`` (:mod:`zimg_queue.packing`): the same bytes as redis-py's own packer, for any arguments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.connection import Connection
from redis.exceptions import DataError

from zimg_queue.packing import CommandPacker

#: redis-py's own packer, as a connection builds it when hiredis is installed.
REDIS_PY = Connection()._command_packer
OURS = CommandPacker()

argument = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=16).map(memoryview),
    st.binary(max_size=16).map(bytearray),
)
name = st.sampled_from(["HSET", "SET", "EVALSHA", "SCRIPT LOAD", "CLIENT SETNAME", b"HGETALL", b"SCRIPT EXISTS"])


def _bytes(packer, *args) -> bytes:
    return b"".join(bytes(chunk) for chunk in packer.pack(*args))


def test_redis_py_packs_with_hiredis_here():
    assert type(REDIS_PY).__name__ == "HiredisRespSerializer"  # else this compares against another packer


@given(name, st.lists(argument, max_size=12))
def test_same_bytes_as_redis_py(command, args):
    assert _bytes(OURS, command, *args) == _bytes(REDIS_PY, command, *args)


@pytest.mark.parametrize("bad", [True, None, [1], {"a": 1}])
def test_the_same_error_as_redis_py_for_what_redis_cannot_hold(bad):
    with pytest.raises(DataError) as theirs:
        REDIS_PY.pack("SET", "key", bad)
    with pytest.raises(DataError) as ours:
        OURS.pack("SET", "key", bad)
    assert type(bad).__name__ in str(ours.value) and type(bad).__name__ in str(theirs.value)


def test_the_clients_of_zimg_queue_use_it(redis_server):
    from zimg_queue.connection import connect

    client = connect(redis_server.url)
    assert client.ping()
    connection = client.connection_pool.get_connection()
    try:
        assert isinstance(connection._command_packer, CommandPacker)
    finally:
        client.connection_pool.release(connection)
    with client.pipeline() as pipe:  # a transaction of the kinds a job's result is made of
        pipe.hset("packing:h", mapping={"a": "é", "b": 1.5, "c": 2**40, "d": b"\x00\xff"})
        pipe.hgetall("packing:h")
        pipe.delete("packing:h")
        assert pipe.execute()[1] == {b"a": "é".encode(), b"b": b"1.5", b"c": str(2**40).encode(), b"d": b"\x00\xff"}
