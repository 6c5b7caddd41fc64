"""The round messages as Flower records: round trips, and malformed ones rejected."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from agent.federated.inprocess import act_as_server
from agent.federated.messages import DeviceReply, RoundInstructions, SparseWire
from agent.federated.pool import GENERATOR
from agent.federated.wire import (
    WireError,
    decode_instructions,
    decode_reply,
    encode_instructions,
    encode_reply,
    wire_bytes,
)

INS = RoundInstructions(round=2, bundle_id="b", generator=GENERATOR, pool_base=5, pool_size=64,
                        steps=3, q=2, lr=0.01, eps=0.01, clip=10.0,
                        previous=SparseWire(size=64, indices=(1, 9), values=(0.5, -0.25)),
                        previous_pool_base=4)


def _msg(content: RecordDict) -> Message:
    act_as_server(1)
    return Message(content, dst_node_id=1, message_type="train", group_id="2")


def test_instructions_and_replies_round_trip() -> None:
    assert decode_instructions(_msg(encode_instructions(INS))) == INS
    reply = DeviceReply(round=2, bundle_id="b", generator=GENERATOR, pool_base=5, examples=7,
                        accumulator=SparseWire(size=64, indices=(3,), values=(1.5,)))
    content = encode_reply(reply)
    assert decode_reply(_msg(content)) == reply
    assert wire_bytes(content) < 600  # one seed: a few hundred bytes with Flower's framing


@pytest.mark.parametrize("doc", [
    {"round": 2},  # fields missing
    {**encode_reply(DeviceReply(round=1, bundle_id="b", generator="g", pool_base=1))
     .config_records["fed"], "acc.size": 8, "acc.indices": b"\x01", "acc.values": b""},
    {**encode_reply(DeviceReply(round=1, bundle_id="b", generator="g", pool_base=1))
     .config_records["fed"], "acc.size": 8, "acc.indices": b"\x09\x00",
     "acc.values": b"\x00\x00\x80\x3f"},  # index 9 outside K = 8
    {**encode_reply(DeviceReply(round=1, bundle_id="b", generator="g", pool_base=1))
     .config_records["fed"], "extra": 1},
])
def test_malformed_replies_raise_wire_errors(doc: dict) -> None:
    with pytest.raises(WireError):
        decode_reply(_msg(RecordDict({"fed": ConfigRecord(doc)})))
    with pytest.raises(WireError):
        decode_reply(_msg(RecordDict({"other": ConfigRecord({"x": 1})})))


def test_the_client_app_answers_malformed_instructions_with_an_error_reply() -> None:
    from flwr.app import Context

    from agent.federated.client_app import make_client_app
    from tests.federated.fleet_support import analytic_device

    device = analytic_device(1)
    app = make_client_app(lambda ctx: device)
    msg = _msg(RecordDict({"fed": ConfigRecord({"round": 1, "steps": "many"})}))
    msg.metadata.__dict__["_message_id"] = "m1"
    reply = app(msg, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                             run_config={}))
    assert reply.has_error() and reply.error.code == 400
    assert device.rounds_trained == []
