"""`mobizo-agent serve --config`: the service's settings come from agent.toml's sections."""

from __future__ import annotations

from pathlib import Path

from agent.cli import build_parser
from agent.cli.serve import settings_from_args


def _settings(argv: list[str]):
    parser, _ = build_parser(argv)
    return settings_from_args(parser.parse_args(argv))


def test_serve_config_picks_inference_values(tmp_path: Path) -> None:
    toml = tmp_path / "agent.toml"
    toml.write_text(
        f'[paths]\nstate_dir = "{tmp_path / "state"}"\n'
        '[service]\ninference_url = "unix:///run/mobizo/x.sock"\n'
        '[inference]\nthreads = 3\nmax_context = 256\nmax_new_tokens = 40\nmax_queue = 7\n'
        'store_max_mb = 2\nretention_days = 5\nwatch_interval_s = 0.5\n')
    bundle, state, cfg = _settings(["serve", "--config", str(toml)])
    assert (bundle, state) == (tmp_path / "state" / "bundle", tmp_path / "state")
    assert (cfg.threads, cfg.max_context, cfg.default_max_tokens, cfg.max_queue) == (3, 256, 40, 7)
    assert (cfg.listen, cfg.unix_socket) == (None, Path("/run/mobizo/x.sock"))
    assert cfg.store.max_total_bytes == 2 * 1024 * 1024 and cfg.store.retention_days == 5
    assert cfg.watch_interval_s == 0.5
    # a flag overrides one field; the rest stay the file's
    _, _, cfg = _settings(["serve", "--config", str(toml), "--threads", "1", "--listen",
                           "127.0.0.1:0"])
    assert (cfg.threads, cfg.max_context, cfg.listen) == (1, 256, "127.0.0.1:0")


def test_serve_without_config_keeps_the_model_defaults(tmp_path: Path) -> None:
    _, state, cfg = _settings(["serve", "--bundle", "b", "--state-dir", str(tmp_path)])
    assert state == tmp_path and cfg.listen == "127.0.0.1:8780" and cfg.unix_socket is None
    assert cfg.default_max_tokens == 128 and cfg.max_queue == 16 and cfg.store.capture
