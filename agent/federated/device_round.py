"""The daemon's round child: one federated round on the device's real data and program.

``python -m agent.federated.device_round --job <file>`` reads a
:class:`~agent.core.federated_job.FederatedRoundJob` (written by
:mod:`agent.services.daemon.federated_round`), loads the device's federated state from
``state_dir`` (:mod:`agent.io.federated_state`: its copy of the global adapter and the round
it replayed, its personal delta, its step counter; the bundle's initial adapter the first
time), runs
:meth:`~agent.federated.client_app.DeviceLearner.train_round` (its steps start from the
global copy; the personal delta becomes this round's own update) with the bundle's ExecuTorch
train program in the device's ``[training] mode`` on the store's snapshot, saves the state
and writes the reply. Whatever goes wrong with the round's inputs (instructions that do not
validate, a q or mode the bundle has no program for, no usable data) is a declined reply
with the reason, never a crash.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from agent.core.bundle import ADAPTER_DIR
from agent.core.federated_job import CANDIDATE_DIR, ROUND_EVAL_FILE, FederatedRoundJob
from agent.errors import MobizoError
from agent.federated.client_app import DeviceLearner, generator_differs
from agent.federated.compact import expand
from agent.federated.messages import DeviceReply, RoundInstructions
from agent.federated.pool import GENERATOR
from agent.federated.replay import GlobalAdapter
from agent.io.atomic import atomic_write_text
from agent.io.federated_state import FederatedState, load_state, save_state

log = logging.getLogger(__name__)


def _tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(arr, dtype=np.float32))


def _declined(job: FederatedRoundJob, reason: str, at_round: int = 0) -> DeviceReply:
    ins = job.instructions
    rnd, base = ins.get("round"), ins.get("pool_base")
    return DeviceReply(
        round=rnd if isinstance(rnd, int) and rnd >= 1 else 1,
        bundle_id=str(ins.get("bundle_id") or "unknown"), generator=GENERATOR,
        pool_base=base if isinstance(base, int) and 0 <= base < (1 << 63) else 0,
        at_round=at_round, status="declined", reason=reason[:200])


def run_job(job: FederatedRoundJob) -> DeviceReply:
    """Run one round's job; the reply (declined with a reason when the inputs are bad)."""
    from agent.io.adapter_fs import AdapterValidator
    from agent.io.bundle_files import read_manifest
    from agent.training.data import BatchStream, load_dataset
    from agent.training.programs import choose_train_shape, load_program, resolve_batch
    from agent.training.tokenize import load_tokenizer

    try:
        ins = RoundInstructions.model_validate(expand(job.instructions))
    except ValidationError as exc:
        return _declined(job, f"bad instructions: {exc.errors()[0]['msg']}")
    except ValueError as exc:
        return _declined(job, f"bad instructions: {exc}")
    manifest = read_manifest(job.bundle)
    validator = AdapterValidator(job.bundle, manifest)
    init_b = validator.load_flat_b(job.bundle / ADAPTER_DIR)
    state = load_state(job.state_dir, manifest.bundle_id, np.asarray(init_b, np.float32))
    differs = generator_differs(ins, manifest.zo_generator)  # before paying for the program
    if differs:
        return _declined(job, differs, state.round)
    try:  # the device's [training] mode; a mode the bundle has no program for declines
        batch = resolve_batch(manifest, job.mode, ins.q, job.batch or None)
        shape = choose_train_shape(manifest, job.mode, ins.q, batch)
        tokenizer = load_tokenizer(job.bundle, manifest.tokenizer.path)
        data = load_dataset(job.data, tokenizer, max_length=manifest.train.max_length,
                            pad_id=manifest.tokenizer.pad_token_id, heldout_share=0.0)
    except (MobizoError, ValueError) as exc:
        return _declined(job, str(exc), state.round)
    program = load_program(job.bundle, job.backend, shape.slices, shape.batch, job.threads)
    stream = BatchStream(data.train, shape.batch, job.salt)
    learner = DeviceLearner(bundle_id=manifest.bundle_id, program=program,
                            batch_at=stream.batch_at, examples=len(data.train), salt=job.salt,
                            glob=GlobalAdapter(_tensor(state.glob), state.round),
                            personal=_tensor(state.personal), mode=job.mode,
                            max_steps=job.max_steps, max_pool=job.max_pool,
                            steps_done=state.steps_done, bundle_generator=manifest.zo_generator)
    reply = learner.train_round(ins)
    save_state(job.state_dir, FederatedState(
        manifest.bundle_id, learner.glob.lora_b.numpy(), learner.personal.numpy(),
        learner.glob.round, learner.steps_done))
    if reply.status == "trained" and job.heldout is not None and job.against is not None:
        try:
            write_candidate(job, manifest, validator, tokenizer, learner.served)
        except (MobizoError, ValueError) as exc:  # the round stands; nothing is served
            log.warning("no served adapter from this round: %s", exc)
    return reply


def write_candidate(job: FederatedRoundJob, manifest: Any, validator: Any, tokenizer: Any,
                    served: torch.Tensor) -> None:
    """Write the served adapter (global + this round's own update) and its held-out loss
    beside the serving adapter's, for the daemon's eval gate."""
    from agent.io.adapter_fs import write_adapter
    from agent.io.atomic import replace_dir, staging_dir
    from agent.training.data import load_dataset
    from agent.training.evaluate import heldout_losses
    from agent.training.programs import choose_eval_shape, load_program

    assert job.heldout is not None and job.against is not None
    pad = manifest.tokenizer.pad_token_id
    held = load_dataset(job.heldout, tokenizer, max_length=manifest.train.max_length,
                        pad_id=pad, heldout_share=0.0).train
    against = validator.load_flat_b(job.against)
    shape = choose_eval_shape(manifest, 2)
    program = load_program(job.bundle, job.backend, shape.slices, shape.batch, job.threads)
    cand, active = heldout_losses(program, held, [served, against], pad_id=pad)
    out = job.state_dir / CANDIDATE_DIR
    tmp = staging_dir(out)
    write_adapter(tmp, validator.layout, served.detach().numpy().astype(np.float32),
                  validator.a_tensors, base_model=manifest.base.source)
    replace_dir(tmp, out)
    atomic_write_text(job.state_dir / ROUND_EVAL_FILE, json.dumps(
        {"candidate_loss": cand, "active_loss": active, "examples": len(held)}) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the job file's round; write the reply; 0 unless the job file itself is bad."""
    parser = argparse.ArgumentParser(prog="python -m agent.federated.device_round")
    parser.add_argument("--job", type=Path, required=True, help="the round job (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        job = FederatedRoundJob.model_validate_json(args.job.read_text())
    except (OSError, ValidationError) as exc:
        print(f"error: cannot read the round job {args.job}: {exc}", file=sys.stderr)
        return 2
    reply = run_job(job)
    atomic_write_text(job.reply, reply.model_dump_json() + "\n")
    log.info("round %d: %s%s", reply.round, reply.status,
             f" ({reply.reason})" if reply.reason else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
