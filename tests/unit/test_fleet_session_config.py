"""``[mqtt] session_expiry_s``: bounded, described, and handed to the transport as is."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.config.mqtt import MqttConfig
from agent.services.fleet.session import transport_settings


def test_session_expiry_reaches_the_transport_for_both_protocols():
    assert MqttConfig().session_expiry_s == 3600  # persistent by default
    for protocol in ("5", "3.1.1"):
        config = MqttConfig(protocol=protocol, session_expiry_s=2)
        assert transport_settings(config, "dev1", None).session_expiry_s == 2
    assert transport_settings(MqttConfig(session_expiry_s=0), "dev1", None).session_expiry_s == 0


@pytest.mark.parametrize("bad", [-1, 7 * 86400 + 1, 1.5])
def test_session_expiry_out_of_bounds_names_the_field(bad):
    with pytest.raises(ValidationError, match="session_expiry_s"):
        MqttConfig(session_expiry_s=bad)


def test_every_new_field_is_described():
    fields = MqttConfig.model_fields
    for name in ("session_expiry_s", "job_cancel_grace_s"):
        assert fields[name].description, name
