"""What one training step did, and the NaN/inf policy (``train.nan_policy``) that judges it.

After the backward pass :func:`judge_step` reads three flags back to the host in one transfer:
the loss is not finite, a gradient is not finite, Ctrl-C was pressed. Under DDP they are first
combined over the ranks (one all-reduce of three numbers), so that every rank takes the same
decisions: apply the update or not, count a NaN step or not, stop or not. This read-back is the
one host synchronisation of a training step outside logging (fp16's gradient scaler makes the
same one).

A step ends in one of three outcomes (:func:`step_outcome`):

* ``applied``: the optimiser stepped;
* ``overflow``: fp16 only, the loss is finite but the scaled gradients overflowed, so the
  update is skipped and the gradient scaler halves its scale. This is how fp16 training
  finds its scale: it is not a NaN step, never stops a run and is not warned about; the
  count appears in TensorBoard (``train/fp16_overflow_skips``);
* ``nonfinite``: the loss is not finite, a gradient is not finite in fp32/bf16, or an fp16
  gradient still overflows with the scale fallen below :data:`MIN_FP16_SCALE` (the gradient
  itself is out of range or NaN). The update is skipped and :class:`NanPolicy` counts it:
  ``skip`` warns and stops after ``max_nan_steps`` in a row, ``stop`` stops at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import UserError

APPLIED, OVERFLOW, NONFINITE = "applied", "overflow", "nonfinite"

MIN_FP16_SCALE = 1.0
"""Below this gradient scale an fp16 overflow is the gradient's own, not the scaling's."""

NAN_POLICIES = ("skip", "stop")


@dataclass(frozen=True)
class StepVerdict:
    """The host's view of one step, the same on every rank."""

    loss_finite: bool
    grads_finite: bool
    stop: bool


def judge_step(
    loss: torch.Tensor, grad_norm: torch.Tensor, stop_requested: bool
) -> StepVerdict:
    """Whether the loss and the gradients are finite and whether any rank asked to stop.

    Args:
        loss: this rank's total loss (scalar).
        grad_norm: the gradients' total norm after unscaling (scalar; after DDP's
            all-reduce the gradients, hence their norm, agree over ranks).
        stop_requested: Ctrl-C seen by this rank.
    """
    flags = torch.stack(
        [
            ~torch.isfinite(loss.detach()).all(),
            ~torch.isfinite(grad_norm.detach()).all(),
            torch.tensor(stop_requested, device=loss.device),
        ]
    ).float()
    if dist.is_initialized():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    loss_bad, grads_bad, stop = flags.tolist()
    return StepVerdict(not loss_bad, not grads_bad, bool(stop))


def apply_update(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    verdict: StepVerdict,
) -> bool:
    """Step ``optimizer`` when the loss and gradients are finite, else drop the gradients.

    Call ``scaler.update()`` afterwards in every case: it lowers the fp16 scale after an
    overflow (the scaler saw the gradients when they were unscaled). Returns whether the
    optimiser stepped.
    """
    if verdict.loss_finite and verdict.grads_finite:
        scaler.step(optimizer)
        return True
    optimizer.zero_grad(set_to_none=True)
    return False


def step_outcome(verdict: StepVerdict, scaler: torch.amp.GradScaler) -> str:
    """``applied``, ``overflow`` or ``nonfinite`` (module docstring); call it after
    ``scaler.update()``, so an overflow is judged by the scale it left."""
    if not verdict.loss_finite:
        return NONFINITE
    if verdict.grads_finite:
        return APPLIED
    if scaler.is_enabled() and scaler.get_scale() >= MIN_FP16_SCALE:
        return OVERFLOW
    return NONFINITE


class NanPolicy:
    """Counts non-finite steps in a row and applies ``train.nan_policy``.

    Args:
        policy: ``skip`` or ``stop``.
        max_steps: with ``skip``, the run stops when more non-finite steps than this
            come in a row.
    """

    def __init__(self, policy: str, max_steps: int):
        if policy not in NAN_POLICIES:
            raise UserError("config key 'train.nan_policy' must be 'skip' or 'stop'")
        self.policy, self.max_steps = policy, max_steps
        self.streak = 0
        self.overflows = 0

    def record(self, outcome: str | bool, step: int) -> str | None:
        """Account for the outcome of step ``step``; returns a warning to print, if any.

        ``outcome`` may also be a bool (True: applied, False: non-finite).

        Raises:
            UserError: the policy says stop.
        """
        if outcome is True or outcome == APPLIED:
            self.streak = 0
            return None
        if outcome == OVERFLOW:
            self.overflows += 1
            return None
        self.streak += 1
        message = f"non-finite loss or gradient at step {step}; update skipped"
        if self.policy == "stop" or self.streak > self.max_steps:
            raise UserError(
                f"{message}; stopping (nan_policy={self.policy}, {self.streak} in a "
                "row). The last checkpoint holds the last good state."
            )
        return f"warning: {message} ({self.streak} in a row)"

    def take_overflows(self) -> int:
        """fp16 overflow skips since the last call."""
        count, self.overflows = self.overflows, 0
        return count
