"""Board profiles state their bundle's quantization scheme; a mismatch warns (issue 8)."""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import get_args

import pytest

from agent.cli import main
from agent.config import load_config
from agent.config.profiles import list_profiles
from agent.config.quantize_check import (
    bundle_scheme_warning,
    export_command,
    scheme_mismatch,
    warn_if_scheme_differs,
)
from agent.config.service import EXPECTED_SCHEMES
from agent.core.bundle import QuantScheme
from agent.io.bundle_files import read_manifest
from tests.io.tiny_bundle import make_bundle

PROFILES = Path(__file__).resolve().parents[2] / "firmware_configs"


def _bundle(root: Path, scheme: str = "none", source: str = "tiny") -> Path:
    bundle = make_bundle(root)
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    data["quantize"] = scheme
    data["base"]["source"] = source
    path.write_text(json.dumps(data))
    return bundle


def _config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(body)
    return path


def test_expected_schemes_are_the_exporter_schemes_plus_any() -> None:
    assert ("any", *get_args(QuantScheme)) == EXPECTED_SCHEMES


@pytest.mark.parametrize("name", list_profiles(PROFILES))
def test_every_profile_states_a_scheme(name: str, tmp_path: Path) -> None:
    loaded = load_config(_config(tmp_path, f'[device]\nprofile = "{name}"\n'),
                         profiles_dir=PROFILES)
    assert loaded.config.service.quantize in get_args(QuantScheme)
    assert loaded.source_of("service.quantize") == f"profile {name}"


def test_small_boards_quantize_and_big_ones_do_not(tmp_path: Path) -> None:
    def scheme(name: str) -> str:
        cfg = _config(tmp_path, f'[device]\nprofile = "{name}"\n')
        return load_config(cfg, profiles_dir=PROFILES).config.service.quantize

    assert scheme("raspberry-pi-4") != "none" and scheme("raspberry-pi-5") != "none"
    assert scheme("dev") == "none"  # `make run` exports the starter unquantized


def test_unknown_scheme_is_a_config_error_with_the_field_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, '[service]\nquantize = "int3"\n')
    assert main(["config", "check", str(path)]) == 1
    out = capsys.readouterr().out
    assert ("service.quantize: Input should be 'any', 'none', '8da8w' or '8da4w' (got 'int3') "
            f"[{path}:2]") in out


def test_matching_or_unstated_scheme_is_silent(tmp_path: Path) -> None:
    manifest = read_manifest(_bundle(tmp_path / "b", "8da8w"))
    assert scheme_mismatch("8da8w", manifest, tmp_path / "b", origin="default") is None
    assert scheme_mismatch("any", manifest, tmp_path / "b", origin="default") is None


def test_mismatch_names_both_schemes_where_it_was_set_and_the_command(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", "none", source="preset:starter seed=3")
    msg = scheme_mismatch("8da4w", read_manifest(bundle), bundle,
                          origin="profile raspberry-pi-4")
    assert msg is not None
    assert "quantized with 'none'" in msg and "asks for '8da4w'" in msg
    assert "service.quantize (profile raspberry-pi-4)" in msg and "still works" in msg
    cmd = msg.split("`")[1]
    assert cmd.startswith("mobizo-export --preset starter --seed 3 ")
    assert f"--out {tmp_path / 'bundle-8da4w'} --quantize 8da4w" in cmd
    assert "service.quantize = 'none'" in msg  # the other way out: keep this bundle


def test_export_command_rebuilds_the_bundle_shape(tmp_path: Path) -> None:
    manifest = read_manifest(_bundle(tmp_path / "b", source="/models/my llama"))
    argv = shlex.split(export_command(manifest, tmp_path / "out", "8da8w"))
    assert argv[:2] == ["mobizo-export", "/models/my llama"]  # quoted: it has a space
    opts = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert opts == {
        "--out": str(tmp_path / "out"), "--quantize": "8da8w", "--slices": "2", "--batch": "1",
        "--max-length": "16", "--max-targets": "15", "--max-context": "32",
        "--prefill-chunk": "8", "--rank": "2", "--alpha": "4", "--lora-layers": "all",
        "--targets": "q_proj,v_proj",
    }
    from exporter.cli import build_parser

    build_parser().parse_args(argv[1:])  # mobizo-export accepts it


def test_export_command_of_a_train_only_bundle(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "b")
    data = json.loads((bundle / "manifest.json").read_text())
    data["infer"] = None
    (bundle / "manifest.json").write_text(json.dumps(data))
    argv = shlex.split(export_command(read_manifest(bundle), tmp_path / "out", "8da4w"))
    assert "--train-only" in argv and "--max-context" not in argv

    from exporter.cli import build_parser

    build_parser().parse_args(argv[1:])


def test_config_check_warns_but_passes(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    bundle = _bundle(tmp_path / "bundle", "none")
    path = _config(tmp_path, f'[device]\nprofile = "raspberry-pi-5"\n'
                             f'[service]\nbundle_dir = "{bundle}"\n')
    assert main(["config", "check", str(path), "--profiles-dir", str(PROFILES)]) == 0
    out = capsys.readouterr().out
    assert "OK (profile raspberry-pi-5)" in out
    assert "warning: the model bundle" in out and "--quantize 8da8w" in out


def test_no_bundle_or_an_unreadable_one_is_left_to_the_loaders(tmp_path: Path) -> None:
    path = _config(tmp_path, f'[service]\nquantize = "8da8w"\nbundle_dir = "{tmp_path / "no"}"\n')
    assert bundle_scheme_warning(load_config(path)) is None
    bundle = _bundle(tmp_path / "no", "none")
    (bundle / "manifest.json").write_text("{broken")
    assert bundle_scheme_warning(load_config(path)) is None


def test_daemon_start_logs_the_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The composition root warns once the bundle is found, and still opens the registry."""
    from agent.app import App, AppOptions

    bundle = _bundle(tmp_path / "bundle", "8da8w")
    path = _config(tmp_path, f'[service]\nquantize = "none"\nbundle_dir = "{bundle}"\n')
    app = App(AppOptions(config_path=path, state_dir=tmp_path / "state",
                         configure_logging=False))
    with caplog.at_level(logging.WARNING, logger="agent.app"):
        registry = app._open_registry(app.load())
    assert registry is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("quantized with '8da8w'" in w and "--quantize none" in w for w in warnings)


def test_warn_helper_logs_nothing_when_it_matches(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    bundle = _bundle(tmp_path / "bundle", "8da8w")
    path = _config(tmp_path, f'[service]\nquantize = "8da8w"\nbundle_dir = "{bundle}"\n')
    with caplog.at_level(logging.WARNING):
        assert warn_if_scheme_differs(load_config(path), logging.getLogger("t")) is None
    assert not caplog.records


def test_a_cache_longer_than_the_service_may_use_warns_with_the_command(tmp_path: Path) -> None:
    """The KV cache is sized at export and resident whole: a profile's shorter context leaves
    the rest resident for nothing (issue 16)."""
    from agent.config.quantize_check import context_waste

    bundle = _bundle(tmp_path / "bundle", "8da8w")
    manifest = read_manifest(bundle)
    assert manifest.infer is not None and manifest.infer.max_context == 32
    assert context_waste(32, manifest, bundle, origin="default") is None
    assert context_waste(512, manifest, bundle, origin="default") is None
    msg = context_waste(16, manifest, bundle, origin="profile raspberry-pi-4")
    assert msg is not None
    assert "KV cache of 32 tokens" in msg
    assert "inference.max_context (profile raspberry-pi-4)" in msg
    cmd = shlex.split(msg.split("`")[1])
    assert cmd[cmd.index("--max-context") + 1] == "16" and "--quantize" in cmd
    assert cmd[cmd.index("--out") + 1] == str(tmp_path / "bundle-ctx16")


def test_config_check_names_both_a_scheme_and_a_context_mismatch(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path / "bundle", "none")
    path = _config(tmp_path, f'[service]\nquantize = "8da8w"\nbundle_dir = "{bundle}"\n'
                             '[inference]\nmax_context = 16\n')
    warning = bundle_scheme_warning(load_config(path))
    assert warning is not None and len(warning.splitlines()) == 2
    assert "quantized with 'none'" in warning and "KV cache of 32 tokens" in warning
