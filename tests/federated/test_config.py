"""The [federated] section: off by default, strict, TLS required off loopback."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.config.federated import FederatedConfig
from agent.config.root import AgentConfig


def test_off_by_default_and_in_the_root_config() -> None:
    assert AgentConfig().federated.enabled is False
    assert AgentConfig.model_validate({"federated": {"enabled": True}}).federated.enabled


@pytest.mark.parametrize("doc", [
    {"enabled": True, "superlink": "fleet.example.org:9092"},  # plaintext off loopback
    {"pool": 3},  # unknown key
    {"max_pool_size": 70_000},
    {"superlink": "no-port"},
])
def test_bad_sections_are_refused(doc: dict) -> None:
    with pytest.raises(ValidationError):
        FederatedConfig.model_validate(doc)


def test_tls_makes_a_remote_superlink_valid() -> None:
    cfg = FederatedConfig.model_validate({"enabled": True, "superlink": "fleet.example.org:9092",
                                          "root_certificates": "/etc/mobizo/ca.pem"})
    assert cfg.root_certificates is not None
