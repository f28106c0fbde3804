"""A second device on a CPU-only machine: tensors "on" it are CPU tensors tagged as such, and an op that mixes tagged
tensors with untagged ones raises what a CUDA/CPU mix raises, while the real numbers flow on the CPU. So whole steps
(a training epoch, resume, the prior, the final grid, export, the reader's training, evaluation) run end to end with
their model and data on "the other device", and any place that builds a tensor on the CPU beside device data fails.

The code under test is handed OTHER (PyTorch's `meta` device, which every build has) as its device. Under the mode:
- a factory given device=OTHER (torch.zeros, torch.arange, ...) builds on the CPU and tags; given a CPU generator as
  well it raises, as CUDA does (a generator must live on the device it draws for);
- .to(OTHER) copies and tags; .to("cpu") / .cpu() copies and untags; an untagged tensor's .to(OTHER) is a move;
- `t.device` says OTHER for a tagged tensor; `param.data = tagged` tags the parameter (nn.Module.to);
- any other op with a tagged input tags its outputs (a parameter's .grad, read back, included), and raises if another
  input is an untagged tensor of one element or more; untagged 0-dim tensors are let through (CUDA takes CPU scalars);
  .copy_ between them is allowed (a cross-device copy);
- torch.save writes tagged tensors as CPU tensors (what map_location="cpu" loads a CUDA checkpoint as);
- .numpy() of a tagged tensor raises (CUDA tensors must come to the CPU first); .item() and .tolist() do not.
What it cannot see: work done inside TorchScript or in C++ without Python (those run on the real CPU tensors).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

OTHER = torch.device("meta")
CPU = torch.device("cpu")
MIXED = "Expected all tensors to be on the same device, but found at least two devices, {} and cpu! (in {})"

_DEVICE_GET = torch.Tensor.device.__get__
_DATA_SET = torch.Tensor.data.__set__
_NUMPY = (torch.Tensor.numpy, torch.Tensor.__array__)
# What legitimately takes tensors on two devices: a copy, and nn.Module.to's question whether a moved tensor can
# replace a parameter's data.
_CROSS_DEVICE = (torch.Tensor.copy_, torch._has_compatible_shallow_copy_type)


def _name(func: Any) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)


def _is_other(device: Any) -> bool:
    return device is not None and torch.device(device).type == OTHER.type


def _unseen(func: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        with torch._C.DisableTorchFunction():
            return func(*args, **kwargs)

    return call


class OtherDevice(TorchFunctionMode):
    """`with OtherDevice() as other:` the code under test, given OTHER as its device. `other.ops`: how many ops ran
    with an input on the other device (a check that the work ran there at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.tagged: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.ops = 0
        self._parameter_new: Any = None
        self._unseen: dict[tuple[Any, str], Any] = {}

    def __enter__(self) -> OtherDevice:
        # nn.Parameter(tagged) (deepcopy builds parameters so) makes its tensor where no op sees it: tag it there.
        self._parameter_new = new = torch.nn.Parameter.__new__

        def parameter(cls: Any, data: Any = None, requires_grad: bool = True) -> Any:
            return self._tag(new(cls, data, requires_grad), True) if self.on(data) else new(cls, data, requires_grad)

        torch.nn.Parameter.__new__ = parameter  # type: ignore[method-assign]
        # Run unseen: torch.save, which writes tagged tensors as the CPU tensors they are (a CUDA tensor saved and
        # loaded with map_location="cpu", as every load in training/ does), not as data-less meta tensors; and
        # torch.export, which traces on the real meta device (of CPU models: the programs step exports files).
        for owner, name in ((torch, "save"), (torch.export, "export")):
            self._unseen[owner, name] = original = getattr(owner, name)
            setattr(owner, name, _unseen(original))
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        torch.nn.Parameter.__new__ = self._parameter_new  # type: ignore[method-assign]
        for (owner, name), original in self._unseen.items():
            setattr(owner, name, original)

    def on(self, t: Any) -> bool:
        return isinstance(t, torch.Tensor) and t in self.tagged

    def _tag(self, out: Any, value: bool = True) -> Any:
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                if value:
                    self.tagged[t] = True
                else:
                    self.tagged.pop(t, None)
        return out

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func == _DEVICE_GET:
            return OTHER if self.on(args[0]) else func(*args)
        if func == _DATA_SET:
            self._tag(args[0], self.on(args[1]))
            return func(*args)
        if func in (torch.Tensor.to, torch.Tensor.cpu):
            moved = self._move(func, args, kwargs)
            if moved is not NotImplemented:
                return moved
        if _is_other(kwargs.get("device")):
            return self._factory(func, args, kwargs)
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        there = [t for t in tensors if self.on(t)]
        if not there:
            return func(*args, **kwargs)
        self.ops += 1
        if func in _NUMPY:
            raise TypeError(f"can't convert {OTHER} device type tensor to numpy. Use Tensor.cpu() to copy it first.")
        if func not in _CROSS_DEVICE and any(not self.on(t) and t.dim() > 0 for t in tensors):
            raise RuntimeError(MIXED.format(OTHER, _name(func)))
        return self._tag(func(*args, **kwargs))

    def _move(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """t.to(...) / t.cpu(): a copy when it changes device (tagged or not), the tensor itself when it does not."""
        src = args[0]
        if func is torch.Tensor.cpu:
            target, dtype = CPU, None
        else:
            target, dtype, _, _ = torch._C._nn._parse_to(*args[1:], **kwargs)
            if target is None:
                return NotImplemented  # a dtype change: an ordinary op
        to_other = _is_other(target)
        out = src.to(dtype=dtype) if dtype is not None else src
        if to_other == self.on(src):
            return out if out is src else self._tag(out, to_other)
        if out is src:
            out = src.clone()
        return self._tag(out, to_other)

    def _factory(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        generator = kwargs.get("generator")
        if generator is not None and generator.device.type != OTHER.type:
            raise RuntimeError(f"Expected a '{OTHER.type}' device type for generator but found '{generator.device}'")
        self.ops += 1
        args = tree_map(lambda a: a.clone() if self.on(a) else a, args)  # torch.tensor(tagged, device=OTHER)
        return self._tag(func(*args, **{**kwargs, "device": CPU}))
