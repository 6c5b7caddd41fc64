"""Export options (what `mobizo-export` takes), validated before any work starts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent.core.lora_layout import CANONICAL_TARGETS

# Limits: below them the programs are useless, above them export/memory blow up on a device.
MIN_LENGTH, MAX_LENGTH = 8, 4096
MAX_SLICES = 64


class ExportOptions(BaseModel):
    """Everything that shapes a bundle besides the checkpoint itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: tuple[str, ...] = Field(default=CANONICAL_TARGETS, description="LoRA'd projections")
    rank: int = Field(default=16, ge=1, le=256)
    alpha: float = Field(default=32.0, gt=0)
    lora_layers: str = Field(
        default="all", description="'all', 'last-quarter' or 'last-K' (K an integer)"
    )
    slices: tuple[int, ...] = Field(default=(1, 2, 4, 8), description="S values to export")
    batch: tuple[int, ...] = Field(default=(2,), description="b values to export")
    shapes: tuple[tuple[int, int], ...] | None = Field(
        default=None,
        description="the exact (slices, batch) methods to export, each within the "
                    "slices x batch grid (None: the whole grid); a caller that knows its "
                    "shapes skips lowering the ones it would never load")
    max_length: int = Field(default=256, description="T of the train program")
    max_context: int = Field(default=1024, description="KV cache length of the infer program")
    prefill_chunk: int = Field(default=32, ge=1, le=512)
    attention: Literal["llm-ops", "masked"] = Field(
        default="llm-ops",
        description="how infer.pte attends: ExecuTorch's LLM ops (llama::custom_sdpa over the "
                    "filled positions; the runtime's ops library needs an ARMv8.1+ CPU on Arm) "
                    "or a masked matmul over the whole cache (any CPU, e.g. the Pi 4's "
                    "Cortex-A72; slower decode)")
    backend: Literal["xnnpack", "portable"] = "xnnpack"
    quantize: Literal["none", "8da8w", "8da4w"] = Field(
        default="none", description="base-linear quantization (exporter/quantize.py)")
    seed: int = Field(default=0, ge=0, description="LoRA-A init (and the starter weights)")
    max_targets: int | None = Field(
        default=None, ge=1,
        description="target positions per sequence that reach the LM head (None: max_length-1,"
                    " every position; smaller is faster when responses are shorter than T)")
    loss_chunk: int = Field(default=128, ge=1, description="target chunk of the in-graph loss")
    head_rows: int = Field(
        default=512, ge=1, le=65536,
        description="most target rows one head_loss call scores: its [rows, vocab] logits "
                    "are a step's biggest tensor (512 x 32000 floats = 65 MB)")
    train_only: bool = Field(
        default=False, description="skip infer.pte (benchmark bundles: they never serve)")
    bench_forward: bool = Field(
        default=False,
        description="also write the benchmark's programs: bench_forward.pte (forwards over "
                    "max(slices)·b rows with one adapter (t_fwd) and with no LoRA "
                    "(t_fwd_merged)) and bench_infer.pte (the S=1 method alone)",
    )

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = sorted(set(v) - set(CANONICAL_TARGETS))
        if bad or not v:
            raise ValueError(f"unknown LoRA targets {bad or '(none)'}; choose from "
                             f"{', '.join(CANONICAL_TARGETS)}")
        return tuple(t for t in CANONICAL_TARGETS if t in set(v))

    @field_validator("slices", "batch")
    @classmethod
    def _sizes(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 1 or max(v) > MAX_SLICES:
            raise ValueError(f"give values between 1 and {MAX_SLICES}, got {list(v)}")
        return tuple(sorted(set(v)))

    def lora_layer_indices(self, num_layers: int) -> tuple[int, ...]:
        """Resolve ``lora_layers`` for a model with ``num_layers`` blocks."""
        spec = self.lora_layers
        if spec == "all":
            return tuple(range(num_layers))
        if spec == "last-quarter":
            k = max(1, num_layers // 4)
        elif spec.startswith("last-") and spec[5:].isdigit():
            k = int(spec[5:])
        else:
            raise ValueError(f"--lora-layers {spec!r} is not 'all', 'last-quarter' or 'last-K'")
        if not 1 <= k <= num_layers:
            raise ValueError(f"--lora-layers {spec}: the model has {num_layers} layers; "
                             f"choose K between 1 and {num_layers}")
        return tuple(range(num_layers - k, num_layers))

    def target_window(self) -> int:
        """K: the number of target positions per sequence the train program scores."""
        full = self.max_length - 1
        if self.max_targets is not None and self.max_targets > full:
            raise ValueError(f"--max-targets {self.max_targets} exceeds --max-length - 1 = "
                             f"{full}; choose at most {full}")
        return self.max_targets or full

    @model_validator(mode="after")
    def _shapes_in_grid(self) -> ExportOptions:
        if self.shapes is not None:
            outside = [(s, b) for s, b in self.shapes
                       if s not in self.slices or b not in self.batch]
            if not self.shapes or outside:
                raise ValueError(f"shapes {list(self.shapes)} must be a non-empty subset of "
                                 f"slices {list(self.slices)} x batch {list(self.batch)}; "
                                 f"outside it: {outside}")
        return self

    def train_shapes(self) -> list[tuple[int, int]]:
        if self.shapes is not None:
            return sorted(set(self.shapes))
        return [(s, b) for s in self.slices for b in self.batch]
