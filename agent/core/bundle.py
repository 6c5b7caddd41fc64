"""The model bundle manifest: what ``mobizo-export`` writes and every consumer reads.

A bundle directory holds::

    manifest.json        this model, serialized
    train.pte            MP-LoRA training program, one method per (slices, batch) shape
    infer.pte            generation program (KV cache), LoRA-B as a runtime input; from
                         format 5 it attends with ExecuTorch's LLM ops (agent/io/llm_ops.py)
    weights.ptd          the frozen weights of both programs, each stored once (format 4+;
                         in format 3 each program carried its own copy)
    adapter/             the initial adapter, PEFT layout (A random & frozen, B zero)
    tokenizer/           Hugging Face tokenizer files

Pure: pydantic + json only, so the daemon can read a manifest without torch; the directory
itself is read by agent/io/bundle_files.py.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agent.core.bundle_reexport import reexport_command
from agent.core.lora_layout import LoraLayout
from agent.errors import BundleError

# 2: train methods take the packed target window; 3: they return the target rows' hidden states
# and the program's head_loss method scores them in chunks; 4: the programs keep their weights
# in one shared data file (weights.ptd, recorded with its size and sha256); 5: infer.pte calls
# llama::update_cache / llama::custom_sdpa, kernels an agent before 5 does not register, so
# the number tells such an agent to upgrade rather than fail at load_method
BUNDLE_FORMAT_VERSION = 5
# Formats this agent loads: 3 (self-contained programs) and 4 (attention without the LLM
# ops) are served as before; re-exporting them is faster and smaller.
READABLE_FORMATS: Final[tuple[int, ...]] = (3, 4, 5)
WEIGHTS_FILE = "weights.ptd"
MANIFEST_NAME = "manifest.json"
TRAIN_PROGRAM = "train.pte"
INFER_PROGRAM = "infer.pte"
HEAD_METHOD = "head_loss"
# infer.pte's prefill and decode for positions deep in the context (the masked form:
# exporter/programs.py infer_method_names); bundles without them are served without them
LONG_PREFILL_METHOD = "prefill_long"
LONG_DECODE_METHOD = "decode_long"
ADAPTER_DIR = "adapter"
TOKENIZER_DIR = "tokenizer"
GENERATION_CONFIG = "generation_config.json"  # the checkpoint's, copied when it has one

Backend = Literal["xnnpack", "portable"]
QuantScheme = Literal["none", "8da8w", "8da4w"]
QUANT_SCHEMES: Final[tuple[str, ...]] = get_args(QuantScheme)  # mobizo-export --quantize


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelShape(_Strict):
    """Architecture numbers of the base model (from its config.json)."""

    family: str = Field(description="row of exporter.families, e.g. 'llama' or 'qwen2'")
    vocab_size: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    num_heads: int = Field(ge=1)
    num_kv_heads: int = Field(ge=1)
    head_dim: int = Field(ge=1)
    intermediate_size: int = Field(ge=1)
    max_position_embeddings: int = Field(ge=1)
    num_params: int = Field(ge=1, description="base model parameters")


class LoraSpec(_Strict):
    """Which linears carry LoRA and how big it is."""

    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    targets: tuple[str, ...]
    layers: tuple[int, ...]
    num_params: int = Field(ge=1, description="length of one flat LoRA-B row")
    a_sha256: str = Field(description="hash of the frozen LoRA-A tensors baked into the programs")


class TrainShape(_Strict):
    """One exported training method:
    ``method(tokens[b,T], target_pos[b,K], target_weight[b,K], lora_b[S,P]) -> [S]``."""

    method: str
    slices: int = Field(ge=1, description="S: models evaluated in one call")
    batch: int = Field(ge=1, description="b: sequences per slice")


class TrainProgramSpec(_Strict):
    program: str = TRAIN_PROGRAM
    max_length: int = Field(ge=2, description="T: every sequence is padded/truncated to this")
    max_targets: int = Field(
        ge=1, description="K: target positions per sequence that reach the LM head "
        "(agent/core/targets.py); at most max_length - 1")
    shapes: tuple[TrainShape, ...]
    head_method: str = HEAD_METHOD
    head_rows: int = Field(
        ge=1, description="most target rows per head_loss call: bounds the [rows, vocab] "
        "logits of a step whatever its slices x batch x max_targets")

    def method_for(self, slices: int, batch: int) -> TrainShape | None:
        return next((s for s in self.shapes if s.slices == slices and s.batch == batch), None)

    @property
    def max_slices(self) -> int:
        return max(s.slices for s in self.shapes)


class InferProgramSpec(_Strict):
    program: str = INFER_PROGRAM
    max_context: int = Field(ge=2, description="KV cache length: prompt + generated tokens")
    prefill_chunk: int = Field(ge=1, description="tokens per prefill call")
    methods: tuple[str, ...] = ("prefill", "decode")
    attention: Literal["llm-ops", "masked"] = Field(
        default="masked", description="llm-ops: the program calls llama::update_cache / "
        "llama::custom_sdpa (agent/io/llm_ops.py must load); masked: plain ops (format <= 4)")


class WeightsFileSpec(_Strict):
    """The data file both programs read their frozen weights from (exporter/weights_file.py)."""

    file: str = WEIGHTS_FILE
    size: int = Field(ge=0, description="bytes; a loader refuses a file of another size")
    sha256: str = Field(description="of the whole file; a loader refuses another file")


class TokenizerSpec(_Strict):
    path: str = TOKENIZER_DIR
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int = 0
    has_chat_template: bool = False


class GenerationSpec(_Strict):
    """What serving takes from the checkpoint's generation_config.json: every id that ends a
    reply, and the sampling defaults of a request that sets none (None: the service's own)."""

    eos_token_ids: tuple[int, ...] = Field(
        default=(), description="ids that end generation, besides the tokenizer's EOS")
    temperature: float | None = Field(default=None, ge=0, description="0 is greedy")
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, description="0: no top-k cut")


class BaseCheckpoint(_Strict):
    source: str = Field(description="checkpoint directory or preset name it was exported from")
    sha256: str = Field(description="hash over the checkpoint's weight files")
    random_weights: bool = Field(
        default=False, description="true for the starter preset: its weights are random"
    )
    note: str = ""


class BundleManifest(_Strict):
    """Everything a consumer needs to trust and use a bundle."""

    format_version: int = BUNDLE_FORMAT_VERSION
    created_at: str
    base: BaseCheckpoint
    model: ModelShape
    lora: LoraSpec
    train: TrainProgramSpec
    infer: InferProgramSpec | None = Field(
        description="null for a train-only bundle (benchmarks): it cannot serve")
    tokenizer: TokenizerSpec
    weights: WeightsFileSpec | None = Field(
        default=None, description="the shared weights file (format 4); null in format 3, "
        "whose programs carry their own weights")
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec,
        description="from generation_config.json; empty when the checkpoint has none")
    backend: Backend = "xnnpack"
    quantize: QuantScheme = "none"
    versions: dict[str, str] = Field(default_factory=dict)
    zo_generator: str | None = Field(
        default=None, min_length=1, max_length=200,
        description="what draws the ZO directions (agent.core.zo_directions.GENERATOR) where "
        "the bundle was exported; a federated round with another generator is declined. "
        "null: an older bundle that did not record it")

    @property
    def bundle_id(self) -> str:
        """Identity of the base an adapter is trained for: weights, LoRA-A, quantization.

        Adapters are interchangeable exactly between bundles with the same id.
        """
        key = json.dumps(
            [self.base.sha256, self.lora.a_sha256, self.lora.rank, self.lora.alpha,
             list(self.lora.targets), list(self.lora.layers), self.quantize],
        )
        return hashlib.sha256(key.encode()).hexdigest()[:16]


def manifest_from_json(raw: object, *, bundle_dir: Path, path: Path) -> BundleManifest:
    """Pure: validate a parsed ``manifest.json`` of ``bundle_dir`` (read from ``path``).

    Raises:
        BundleError: another bundle format, or not a valid manifest; the message says to
            re-export.
    """
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if version not in READABLE_FORMATS:
        newer = isinstance(version, int) and version > BUNDLE_FORMAT_VERSION
        raise BundleError(
            f"{bundle_dir} has bundle format {version!r}, this agent reads formats "
            f"{', '.join(map(str, READABLE_FORMATS))}; "
            + ("upgrade mobizo-agent, or " if newer else "")
            + f"re-export it with this version: {reexport_command(raw, bundle_dir)}"
        )
    try:
        manifest = BundleManifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path} is invalid: {exc}; re-export the bundle: "
                          f"{reexport_command(raw, bundle_dir)}") from exc
    if (manifest.weights is None) != (version == 3):
        raise BundleError(f"{path} is invalid: format {version} "
                          + ("needs" if version != 3 else "cannot have")
                          + " a weights file entry; re-export the bundle: "
                          f"{reexport_command(raw, bundle_dir)}")
    return manifest


def required_parts(manifest: BundleManifest) -> tuple[str, ...]:
    """The entries a complete bundle directory holds besides its manifest."""
    programs = [manifest.train.program] + ([manifest.infer.program] if manifest.infer else [])
    data = [manifest.weights.file] if manifest.weights else []
    return (*programs, *data, ADAPTER_DIR, TOKENIZER_DIR)


def lora_layout_of(manifest: BundleManifest) -> LoraLayout:
    """The flat LoRA-B layout of a bundle, rebuilt from its manifest."""
    m = manifest.model
    q_out = m.num_heads * m.head_dim
    kv_out = m.num_kv_heads * m.head_dim
    dims = {
        "q_proj": (m.hidden_size, q_out),
        "k_proj": (m.hidden_size, kv_out),
        "v_proj": (m.hidden_size, kv_out),
        "o_proj": (q_out, m.hidden_size),
        "gate_proj": (m.hidden_size, m.intermediate_size),
        "up_proj": (m.hidden_size, m.intermediate_size),
        "down_proj": (m.intermediate_size, m.hidden_size),
    }
    layout = LoraLayout.build(
        layer_dims=dims, layers=manifest.lora.layers, targets=manifest.lora.targets,
        rank=manifest.lora.rank, alpha=manifest.lora.alpha,
    )
    if layout.num_params != manifest.lora.num_params:
        raise BundleError(
            f"manifest says {manifest.lora.num_params} LoRA-B values but its shapes give "
            f"{layout.num_params}; the bundle is inconsistent, re-export it"
        )
    return layout
