"""[federated] section: fleet learning on Flower (issue 20). Off by default (opt-in).

With ``enabled = true`` the device's Flower SuperNode joins the controller's SuperLink and
answers its rounds (agent/federated/client_app.py). Only seeds, per-seed scalars and an
example count leave the device: no text and no adapter. The round's settings (pool, steps,
q, lr, eps, clip) come from the controller; the bounds here are what this device accepts.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from agent.config.base import Section

_ADDRESS = r"^[A-Za-z0-9_.:\[\]-]{1,255}:[0-9]{1,5}$"


class FederatedConfig(Section):
    """Whether and how this device takes part in the fleet's federated rounds."""

    enabled: bool = Field(default=False, description="take part in federated rounds (opt-in)")
    superlink: str = Field(
        default="127.0.0.1:9092", pattern=_ADDRESS,
        description="the controller's Flower SuperLink (Fleet API), host:port",
    )
    root_certificates: Path | None = Field(
        default=None, strict=False,
        description="PEM CA that signed the SuperLink's certificate; unset: plaintext, "
                    "allowed only towards a loopback SuperLink",
    )
    max_steps_per_round: int = Field(
        default=64, ge=1, le=10_000,
        description="the most P-RGE steps a round may ask of this device (more: it declines)",
    )
    max_pool_size: int = Field(
        default=4096, ge=1, le=65_536,
        description="the largest seed pool (K) this device accepts",
    )
    dense_catch_up_rounds: int = Field(
        default=50, ge=1, le=100_000,
        description="behind by more rounds than this, fetch the dense global adapter instead "
                    "of replaying every missed round",
    )

    @model_validator(mode="after")
    def _tls_off_loopback(self) -> FederatedConfig:
        host = self.superlink.rsplit(":", 1)[0].strip("[]")
        loopback = host in ("localhost", "::1") or host.startswith("127.")
        if self.enabled and self.root_certificates is None and not loopback:
            raise ValueError(f"federated.superlink {self.superlink!r} is not a loopback "
                             "address: set federated.root_certificates (TLS) to reach it")
        return self
