"""Topic strings: built in one place, parsed back, and only a device's own."""

from __future__ import annotations

import pytest

from agent.core.topics import DeviceTopics, FleetTopics, valid_id, valid_publish_topic


def test_device_topics_layout():
    t = DeviceTopics.for_device("lab", "dev-1")
    assert t.prefix == "mobizo/v1/lab/dev-1"
    assert t.available == "mobizo/v1/lab/dev-1/available"
    assert t.state == "mobizo/v1/lab/dev-1/state"
    assert t.telemetry == "mobizo/v1/lab/dev-1/telemetry"
    assert t.config_desired == "mobizo/v1/lab/dev-1/config/desired"
    assert t.config_reported == "mobizo/v1/lab/dev-1/config/reported"
    assert t.cmd("train-now") == "mobizo/v1/lab/dev-1/cmd/train-now"
    assert t.cmd_result("r1") == "mobizo/v1/lab/dev-1/cmd-result/r1"
    assert t.job("j1") == "mobizo/v1/lab/dev-1/jobs/j1"
    assert t.subscriptions == (t.cmd_filter, t.config_desired, t.available)


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "x" * 65, "dev 1", "dév"])
def test_names_that_would_break_topics_are_refused(bad):
    with pytest.raises(ValueError, match="not usable in MQTT topics"):
        DeviceTopics.for_device("lab", bad)
    with pytest.raises(ValueError):
        DeviceTopics.for_device(bad, "dev1")


def test_command_name_only_for_own_topics():
    t = DeviceTopics.for_device("lab", "dev1")
    assert t.command_name("mobizo/v1/lab/dev1/cmd/status") == "status"
    assert t.command_name("mobizo/v1/lab/dev2/cmd/status") is None
    assert t.command_name("mobizo/v1/other/dev1/cmd/status") is None
    assert t.command_name("mobizo/v1/lab/dev10/cmd/status") is None
    assert t.command_name("mobizo/v1/lab/dev1/cmd/a/b") is None


def test_fleet_filters_and_split():
    f = FleetTopics("lab")
    assert f.all_state == "mobizo/v1/lab/+/state"
    assert f.all_available == "mobizo/v1/lab/+/available"
    assert f.all_reported == "mobizo/v1/lab/+/config/reported"
    assert f.split("mobizo/v1/lab/dev1/state") == ("dev1", "state")
    assert f.split("mobizo/v1/lab/dev1/config/reported") == ("dev1", "config/reported")
    assert f.split("mobizo/v1/other/dev1/state") is None
    assert f.split("mobizo/v1/lab/dev1") is None
    assert f.controller_reply("c1").startswith("mobizo/v1/lab/_controllers/c1/")


def test_id_and_topic_validation():
    assert (
        valid_id("req-1:a.b_c") and not valid_id("a/b") and not valid_id("") and not valid_id("#")
    )
    assert (
        valid_publish_topic("a/b")
        and not valid_publish_topic("a/+")
        and not valid_publish_topic("")
    )
