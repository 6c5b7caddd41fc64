"""A simulated fleet in one process, on Flower's message API (tests and the benchmark).

:class:`InProcessGrid` is a Flower ``Grid`` whose nodes are ``ClientApp`` objects in this
process: a pushed message is handed to its node's app and the reply is kept until pulled.
Flower's own simulation runtime (``flwr[simulation]``) runs each node in a Ray worker; on the
2-core CI machine that means a Ray cluster and a copy of the ExecuTorch programs per worker
for four tiny devices, so the tests and the benchmark use this grid instead: the ServerApp,
the Strategy and the ClientApp are the same objects and exchange the same messages.

``drop(round, node)`` makes a node drop out mid-round: it receives the round and never
replies, as a board that lost power or network would. ``offline(round, node)``: the node does
not even receive the round (switched off; it rejoins later).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger(__name__)

Drop = Callable[[int, int], bool]  # (round, node id) -> drops out of this round


def _never(server_round: int, node: int) -> bool:
    return False


class InProcessGrid(Grid):
    """Flower nodes as in-process ``ClientApp`` calls (see module docstring)."""

    def __init__(self, app: ClientApp, node_ids: Iterable[int], *, run_id: int = 1,
                 drop: Drop = _never, offline: Drop = _never) -> None:
        self.app = app
        self.contexts = {n: Context(run_id=run_id, node_id=n, node_config={"node-id": n},
                                    state=RecordDict(), run_config={}) for n in node_ids}
        self.drop, self.offline = drop, offline
        self._run = Run.create_empty(run_id)
        self._replies: dict[str, Message] = {}
        self.received: list[Message] = []  # every instruction delivered, for the tests

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's own grids do
            ids.append(msg.metadata.message_id)
            self.received.append(msg)
            node = msg.metadata.dst_node_id
            round_ = int(msg.metadata.group_id or 0)
            if node not in self.contexts or self.offline(round_, node):
                continue  # never delivered: the device is off or out of reach
            try:
                reply = self.app(msg, self.contexts[node])
            except Exception as exc:  # a crashing ClientApp is an error reply, as in Flower
                log.warning("node %d failed: %s", node, exc)
                reply = Message(Error(code=500, reason=str(exc)[:200]), reply_to=msg)
            if self.drop(round_, node):
                continue  # it trained, then lost the link: the reply never arrives
            self._replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))


def act_as_server(run_id: int) -> None:
    """Give this process the ServerApp's task identity, as Flower's runtime does before the
    app runs: new messages take their run and source node from it."""
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID


def run_fleet(server_app: ServerApp, grid: InProcessGrid) -> None:
    """Run ``server_app`` against ``grid`` to the end of its rounds."""
    act_as_server(grid.run.run_id)
    server_app(grid, Context(run_id=grid.run.run_id, node_id=0, node_config={},
                             state=RecordDict(), run_config={}))
