"""CUDA's device rules, enforced on the CPU: a tensor made without ``device=`` is a host tensor.

On a GPU, ``torch.arange(n)`` lands on the CPU while the model and the batch live on the GPU,
and an operation mixing the two fails ("Expected all tensors to be on the same device"). On
the CPU both are the same device, so the mistake passes every CPU test. :class:`DeviceDiscipline`
is a ``TorchFunctionMode`` that gives every tensor a placement, *host* or *device*, computes on
the CPU as usual and raises where CUDA would:

* a factory call (``torch.zeros``, ``arange``, ``tensor``, ``rand``... the constructors that
  ``torch.set_default_device`` redirects) without ``device=`` makes a **host** tensor, and so
  does ``.cpu()``;
* ``.to(device)``, ``device=`` given to a factory, ``Module.to(device)`` and
  ``param.data = ...`` make a **device** tensor: on a CPU run every explicit device is the
  run's device (``"cpu"`` from ``--device cpu`` and ``x.device`` look alike), so code that
  copies to the host must say ``.cpu()``; ``*_like``, ``new_*`` and ``type_as`` follow
  their reference tensor;
* ``torch.from_numpy`` and ``torch.load`` (with ``map_location`` None or ``"cpu"``, as
  ``utils.io.load_checkpoint`` reads files) make **host** tensors;
* any other operation's result is on the device if one of its inputs is, on the host if one
  is and none is on the device (tensors the mode never saw made, e.g. by autograd or before
  the mode started, have no placement and are compatible with both);
* in repository code (not in torch or other libraries, which handle their own devices), an
  operation mixing a host tensor of one or more dimensions with a device tensor is refused,
  as CUDA refuses it: 0-dim host tensors (CUDA's "CPU scalars") mix with anything, host
  index tensors may index a device tensor, ``copy_`` and the shape-only ``expand_as``,
  ``view_as`` and ``reshape_as`` may cross, and ``.numpy()`` of a device tensor is refused.

Unlike ``torch.set_default_device("meta")``, nothing loses its values (``.item()``, ``.tolist()``
and host-index reads of meta tensors fail or read garbage), so data loading, NumPy code and
metrics run exactly as on the CPU and only real cross-device mixes fail. Every violation is
also kept in :attr:`DeviceDiscipline.violations` (with the repository line that made it), so
code that catches exceptions (``--skip-bad``) cannot hide one.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors
from torch.utils.weak import WeakTensorKeyDictionary

ROOT = Path(__file__).resolve().parents[1]
HOST, DEVICE = "host", "device"

_CONSTRUCTORS = _device_constructors()
_LIKE = {
    torch.zeros_like,
    torch.ones_like,
    torch.empty_like,
    torch.full_like,
    torch.rand_like,
    torch.randn_like,
    torch.randint_like,
}
_NEW = {
    torch.Tensor.new_tensor,
    torch.Tensor.new_zeros,
    torch.Tensor.new_ones,
    torch.Tensor.new_empty,
    torch.Tensor.new_full,
}
# Operations whose tensor arguments may sit on different devices under CUDA.
_MAY_CROSS = {
    torch.Tensor.copy_,
    torch.Tensor.expand_as,
    torch.Tensor.view_as,
    torch.Tensor.reshape_as,
    torch.Tensor.type_as,
    torch.Tensor.to,
    torch.Tensor.cpu,
    torch.Tensor.cuda,
}
_TRANSFERS = {
    torch.Tensor.to,
    torch.Tensor.cpu,
    torch.Tensor.cuda,
    torch.Tensor.type_as,
}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}
_TO_NUMPY = {torch.Tensor.numpy, torch.Tensor.__array__}
_PASS_THROUGH = {torch.Tensor.__repr__, torch.Tensor.__format__}
_THIS_FILE = str(Path(__file__).resolve())
_SKIP_FRAMES = (
    str(Path(torch.overrides.__file__).resolve()),
    str(Path(torch.utils._device.__file__).resolve()),
    _THIS_FILE,
)


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in ``value`` (nested lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _is_repository_file(filename: str) -> bool:
    path = str(Path(filename).resolve()) if filename.startswith("/") else ""
    return (
        path.startswith(str(ROOT) + "/")
        and "site-packages" not in path
        and path != _THIS_FILE
    )


class DeviceDiscipline(TorchFunctionMode):
    """Host/device placements on a CPU-only run (see the module docstring).

    Use as a context manager around a whole command; ``violations`` lists
    ``"file:line: message"`` for every refused operation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.placement: WeakTensorKeyDictionary = WeakTensorKeyDictionary()
        self.violations: list[str] = []
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> DeviceDiscipline:
        # Neither function goes through __torch_function__: wrapped while the mode is on.
        from_numpy, load = torch.from_numpy, torch.load
        self._saved = {"from_numpy": from_numpy, "load": load}

        def host_from_numpy(array):
            return self._mark(from_numpy(array), HOST)

        def host_load(*args, **kwargs):
            where = kwargs.get("map_location", args[1] if len(args) > 1 else None)
            loaded = load(*args, **kwargs)
            if where is None or (isinstance(where, str) and where == "cpu"):
                for tensor in _tensors(loaded):
                    self._mark(tensor, HOST)
            return loaded

        torch.from_numpy, torch.load = host_from_numpy, host_load
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        torch.from_numpy, torch.load = self._saved["from_numpy"], self._saved["load"]
        super().__exit__(*exc)

    def _mark(self, tensor: torch.Tensor, placement: str) -> torch.Tensor:
        self.placement[tensor] = placement
        return tensor

    # -------------------------------------------------------------- placements
    def place(self, tensor: torch.Tensor) -> str | None:
        """``"host"``, ``"device"`` or None (never seen made)."""
        return self.placement.get(tensor)

    def _combined(self, tensors: list[torch.Tensor]) -> str | None:
        places = {self.placement.get(t) for t in tensors}
        return DEVICE if DEVICE in places else HOST if HOST in places else None

    def _result_placement(self, func, args, kwargs, inputs) -> str | None:
        if func in _CONSTRUCTORS:
            if kwargs.get("device") is not None:
                return DEVICE
            if func in (torch.as_tensor, torch.asarray) and args:
                if isinstance(args[0], torch.Tensor):
                    return self.placement.get(args[0])
            return HOST
        if func in _LIKE or func in _NEW:
            if kwargs.get("device") is not None:
                return DEVICE
            return self.placement.get(args[0])
        if func is torch.Tensor.cpu:
            return HOST
        if func is torch.Tensor.cuda:
            return DEVICE
        if func is torch.Tensor.type_as:
            return self.placement.get(args[1])
        if func is torch.Tensor.to:
            return self._to_placement(args, kwargs)
        return self._combined(inputs)

    def _to_placement(self, args, kwargs) -> str | None:
        targets = [*args[1:], kwargs.get("device"), kwargs.get("other")]
        for target in targets:
            if isinstance(target, torch.Tensor):
                return self.placement.get(target)
            if isinstance(target, (torch.device, str)):
                return DEVICE
            if isinstance(target, int) and not isinstance(target, bool):
                return DEVICE  # a CUDA ordinal
        return self.placement.get(args[0])

    # ------------------------------------------------------------------ checks
    def _caller(self, func) -> str | None:
        """``file:line`` of the repository code that called ``func``, else None."""
        frame = sys._getframe(2)
        while frame is not None and frame.f_code.co_filename in _SKIP_FRAMES:
            frame = frame.f_back
        code = getattr(func, "__code__", None)
        if frame is not None and code is not None and frame.f_code is code:
            frame = frame.f_back  # a torch function written in Python: its caller
        if frame is None or not _is_repository_file(frame.f_code.co_filename):
            return None
        relative = Path(frame.f_code.co_filename).resolve().relative_to(ROOT)
        return f"{relative}:{frame.f_lineno}"

    def _problem(self, func, args, inputs) -> str | None:
        if func in _TO_NUMPY:
            if self.placement.get(args[0]) == DEVICE:
                return (
                    "can't convert a device tensor to numpy "
                    "(CUDA: use Tensor.cpu() to copy the tensor to host memory first)"
                )
            return None
        if func in _MAY_CROSS or func in _PASS_THROUGH or func in _LIKE:
            return None
        if func in _INDEXING:
            indexed = self.placement.get(args[0])
            indices = _tensors(args[1]) if len(args) > 1 else []
            if indexed == HOST and any(
                self.placement.get(t) == DEVICE for t in indices
            ):
                return "indices on the device index a host tensor"
            return None
        host = [t for t in inputs if self.placement.get(t) == HOST and t.dim() > 0]
        device = [t for t in inputs if self.placement.get(t) == DEVICE]
        if host and device:
            shapes = ", ".join(str(tuple(t.shape)) for t in host[:3])
            return (
                "Expected all tensors to be on the same device: host tensor(s) of "
                f"shape {shapes} (made without device=) mixed with device tensor(s)"
            )
        return None

    # ---------------------------------------------------------------- dispatch
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = _tensors(args) + _tensors(kwargs)
        setter = getattr(func, "__self__", None) is torch.Tensor.data and (
            getattr(func, "__name__", "") == "__set__"
        )
        if setter:  # param.data = value (Module.to): the parameter moves with it
            result = func(*args, **kwargs)
            self._set(args[0], self.placement.get(args[1]))
            return result
        caller = self._caller(func)
        if caller is not None:
            problem = self._problem(func, args, inputs)
            if problem is not None:
                name = getattr(func, "__qualname__", getattr(func, "__name__", func))
                message = f"{caller}: {name}: {problem}"
                self.violations.append(message)
                raise RuntimeError(f"device discipline: {message}")
        placement = self._result_placement(func, args, kwargs, inputs)
        out = func(*args, **kwargs)
        return self._tag(out, inputs, placement, func in _TRANSFERS)

    def _set(self, tensor: torch.Tensor, placement: str | None) -> None:
        if placement is None:
            self.placement.pop(tensor, None)
        else:
            self.placement[tensor] = placement

    def _tag(
        self,
        out: Any,
        inputs: list[torch.Tensor],
        placement: str | None,
        transfer: bool,
    ) -> Any:
        if placement is None:
            return out
        if isinstance(out, torch.Tensor):
            if any(out is t for t in inputs):
                current = self.placement.get(out)
                if current == placement:
                    return out
                if not transfer:  # an in-place operation keeps its tensor's side
                    if current is None:
                        self.placement[out] = placement
                    return out
                # A .to()/.cpu() that returns its input on the CPU is a copy to the
                # other side on CUDA: the input keeps its placement, the result differs.
                out = out.view_as(out)
            self.placement[out] = placement
            return out
        if isinstance(out, (list, tuple)):
            for item in _tensors(list(out)):
                if not any(item is t for t in inputs):
                    self.placement[item] = placement
        return out
