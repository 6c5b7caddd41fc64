"""Test access to the local mosquitto helper (kept in the package so the benchmark shares it)."""

from agent.controller.localbroker import (
    LocalBroker,
    TlsFiles,
    free_port,
    make_certs,
    mosquitto_path,
)

__all__ = ["LocalBroker", "TlsFiles", "free_port", "make_certs", "mosquitto_path"]
