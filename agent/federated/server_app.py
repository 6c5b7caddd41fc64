"""The controller side's Flower ``ServerApp``: runs :class:`SeedStrategy` for a number of rounds.

On a real fleet the SuperLink runs :data:`app` (``[tool.flwr.app.components] serverapp`` of
fleet_app/pyproject.toml) when an operator types ``flwr run fleet_app <connection>``; the
devices' SuperNodes connect to the SuperLink. :data:`app` reads its settings from Flower's
run config (agent/federated/run_config.py) and, with a ``state-file``, goes on from the
rounds a previous run stored. In tests and the benchmark :func:`make_server_app` wraps a
strategy the caller holds and :mod:`agent.federated.inprocess` hands it an in-process grid.
Either way the app talks to the devices only through Flower messages.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from agent.federated.run_config import read_run_config
from agent.federated.strategy import SeedStrategy

log = logging.getLogger(__name__)


def make_server_app(strategy: SeedStrategy, rounds: int, *,
                    timeout_s: float = 3600.0) -> ServerApp:
    """A ``ServerApp`` that runs ``rounds`` rounds of ``strategy``.

    Args:
        strategy: the seed strategy; its ``history`` and ``reports`` fill as rounds finish.
        rounds: how many rounds to run.
        timeout_s: how long a round waits for replies (devices that miss it count as dropped).
    """
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        # no arrays travel: the global adapter is the replayed history (strategy.py)
        strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=timeout_s)

    return server


def strategy_from_run_config(context: Context) -> tuple[SeedStrategy, int, float]:
    """The strategy, round count and round timeout a run config asks for.

    Raises:
        ConfigError: a bad run config key. HistoryError: a bad or foreign state file.
    """
    cfg = read_run_config(context.run_config)
    strategy = SeedStrategy(cfg.settings(), excluded=cfg.excluded(),
                            state_file=cfg.state_path(), min_nodes=cfg.min_nodes,
                            wait_nodes_s=cfg.wait_nodes_s)
    return strategy, cfg.num_server_rounds, cfg.round_timeout_s


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The deployed ServerApp: ``num-server-rounds`` rounds after any stored ones."""
    strategy, rounds, timeout = strategy_from_run_config(context)
    first = strategy.next_round
    strategy.start(grid, ArrayRecord(), num_rounds=rounds, timeout=timeout)
    for r in strategy.reports:
        log.info("round %d: sent %d, accepted %d, declined %d, dropped %d, refused %s",
                 r.round, r.sent, r.accepted, r.declined, r.dropped, dict(r.refused))
    log.info("rounds %d..%d done", first, strategy.next_round - 1)
