"""Building a paho client: protocol, credentials, TLS, TCP_NODELAY, one writer thread.

The device's transport (:mod:`agent.io.mqtt`) and the controller's client both start here
(STYLE.md: one place for the paho client setup); each then sets its own callbacks.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion


def disable_nagle(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Disable Nagle: small request/reply packets would otherwise wait on delayed ACKs
    (~40 ms per hop, measured as a 90 ms round trip through mosquitto)."""
    try:
        raw = getattr(sock, "_sock", sock)  # paho wraps TLS/WebSocket sockets
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class ClientTls:
    """TLS files for :func:`new_client` (see :func:`use_tls`)."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False


def new_client(
    client_id: str,
    *,
    v5: bool,
    username: str | None = None,
    password: str | None = None,
    tls: ClientTls | None = None,
    **options: Any,
) -> paho.Client:
    """A paho client (callback API 2) with protocol, credentials, TLS and TCP_NODELAY set.

    The device's link and the controller's client both start here; each then sets its own
    callbacks.

    Args:
        client_id: the MQTT client id.
        v5: MQTT 5 (else 3.1.1).
        username: broker user, if any (``password`` goes with it).
        password: broker password.
        tls: connect over TLS with these files; None for plain TCP.
        **options: passed on to ``paho.Client`` (``clean_session``, ``reconnect_on_failure``).
    """
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         protocol=paho.MQTTv5 if v5 else paho.MQTTv311, **options)
    if username is not None:
        client.username_pw_set(username, password)
    if tls is not None:
        use_tls(client, ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file,
                insecure=tls.insecure)
    client.on_socket_open = disable_nagle
    return client


def use_tls(
    client: paho.Client,
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    insecure: bool,
) -> None:
    """Make ``client`` connect over TLS and verify the broker's certificate.

    Args:
        client: the paho client, before it connects.
        ca_file: the CA bundle to verify the broker with (None: the system's CAs).
        cert_file: the client certificate to present (mutual TLS), if any.
        key_file: its private key.
        insecure: skip only the hostname check (the chain is still verified).
    """
    client.tls_set(
        ca_certs=str(ca_file) if ca_file else None,
        certfile=str(cert_file) if cert_file else None,
        keyfile=str(key_file) if key_file else None,
        cert_reqs=ssl.CERT_REQUIRED,
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.tls_insecure_set(insecure)


def network_thread_writes(client: paho.Client, userdata: Any, sock: Any) -> None:
    """Registered as paho's ``on_socket_register_write``: nothing to do, and that is the point.

    With no such hook, paho's ``publish()`` writes to the socket at once from the calling thread
    (the link's worker, the job runner) while the network thread reads and writes the same
    socket. An SSL object is not thread-safe: under load the broker saw corrupt TLS records
    ("decryption failed or bad record mac") and dropped the link; plain TCP could interleave
    partial writes. With the hook, ``publish()`` only queues the packet and wakes the network
    thread's ``select()`` (paho's socketpair), which writes it: all socket I/O on one thread.
    """
