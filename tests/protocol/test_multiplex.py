"""Virtual connections' framing (:mod:`federated.protocol.multiplex`): a virtual route names one session on
one connection, and no other connection, tag or routing id can name it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federated.protocol.multiplex import (
    CLOSED,
    MAGIC,
    MESSAGE,
    TAG_BYTES,
    TAG_FRAME_BYTES,
    new_tag,
    parse_tag_frame,
    split_route,
    tag_frame,
    virtual_route,
)

routes = st.binary(min_size=1, max_size=255)
tags = st.binary(min_size=TAG_BYTES, max_size=TAG_BYTES)


@given(tags, st.booleans())
def test_a_tag_frame_reads_back_as_written(tag: bytes, closed: bool) -> None:
    frame = tag_frame(tag, closed=closed)
    assert len(frame) == TAG_FRAME_BYTES
    assert parse_tag_frame(frame) == (tag, closed)


def test_a_protocol_message_first_frame_is_not_a_tag_frame() -> None:
    from federated.protocol import VERSION

    assert parse_tag_frame(VERSION) is None
    assert parse_tag_frame(VERSION.ljust(TAG_FRAME_BYTES, b"\0")) is None


@pytest.mark.parametrize("frame", [
    MAGIC + MESSAGE + b"\0" * (TAG_BYTES - 1),  # short
    MAGIC + MESSAGE + b"\0" * (TAG_BYTES + 1),  # long
    MAGIC + b"?" + b"\0" * TAG_BYTES,  # unknown op
    b"FLMY" + CLOSED + b"\0" * TAG_BYTES,  # wrong magic
    b"",
])
def test_anything_else_is_not_a_tag_frame(frame: bytes) -> None:
    assert parse_tag_frame(frame) is None


@given(routes, tags)
def test_a_virtual_route_splits_back_and_is_longer_than_any_routing_id(route: bytes, tag: bytes) -> None:
    virtual = virtual_route(route, tag)
    assert len(virtual) > 255  # so no peer can pick it as its routing id
    assert split_route(virtual) == (route, tag)


@given(routes)
def test_a_connection_s_own_routing_id_splits_to_itself(route: bytes) -> None:
    assert split_route(route) == (route, None)


@given(routes, tags, routes, tags)
def test_different_connections_or_tags_give_different_virtual_routes(r1: bytes, t1: bytes, r2: bytes,
                                                                    t2: bytes) -> None:
    """Injective: a tag names a session only on the connection that drew it (a routing id that is a prefix
    of another, padded with zeros, is still another connection)."""
    assert (virtual_route(r1, t1) == virtual_route(r2, t2)) == ((r1, t1) == (r2, t2))


def test_a_prefix_routing_id_is_another_connection() -> None:
    tag = bytes(TAG_BYTES)
    assert virtual_route(b"a", tag) != virtual_route(b"a\0", tag)


@pytest.mark.parametrize(("route", "tag"), [(b"", bytes(TAG_BYTES)), (b"x" * 256, bytes(TAG_BYTES)),
                                            (b"x", b"short")])
def test_a_virtual_route_refuses_what_zeromq_cannot_send(route: bytes, tag: bytes) -> None:
    with pytest.raises(ValueError):
        virtual_route(route, tag)


def test_tags_are_fresh() -> None:
    drawn = {new_tag() for _ in range(1000)}
    assert len(drawn) == 1000 and all(len(t) == TAG_BYTES for t in drawn)
    with pytest.raises(ValueError):
        tag_frame(b"short")
