"""Running under torchrun: the process group, this process's place in it, and the few
collectives that training and the attack runner need.

``torchrun --nproc_per_node N -m robustmix train ...`` starts N processes and sets
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous variables; :func:`start` reads
them and joins the process group: gloo, plus NCCL for CUDA tensors where there is a GPU
(so a run on the CPU of a GPU machine works too, and the small object collectives go
through gloo). Without torchrun
nothing here starts a group, :func:`current` is rank 0 of 1, and every helper is the
identity, so the single-process code path is the same code.

Only rank 0 writes files and prints. Steps whose outcome must be the same everywhere (is
the run directory usable? can the checkpoint be read? did the epoch's files get written?)
run on rank 0 through :func:`on_main`, which hands the result, or the one-line error, to
every rank: a refused input makes every process exit 2 with one printed line, instead of
rank 0 failing while the others wait in a collective; any other failure on rank 0 (a bug)
stops the others too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch

from robustmix.core.errors import UsageError

T = TypeVar("T")
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Place:
    """This process's rank among ``world`` processes, and its rank on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether a process group exists (torchrun started this process)."""
        return torch.distributed.is_available() and torch.distributed.is_initialized()


def launched() -> bool:
    """Whether torchrun (or another launcher that sets its variables) started us."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def _env_int(name: str, default: int | None = None) -> int:
    text = os.environ.get(name)
    if text is None and default is not None:
        return default
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise UsageError(f"environment variable {name}={text!r} is not an integer; start "
                         "distributed runs with torchrun") from None


def start() -> Place:
    """Join torchrun's process group (once); returns this process's place. Each process
    uses the GPU of its local rank."""
    if not launched():
        return Place()
    if not torch.distributed.is_available():
        raise UsageError("this PyTorch build has no torch.distributed; run without torchrun")
    rank, world = _env_int("RANK"), _env_int("WORLD_SIZE")
    local_rank = _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world:
        raise UsageError(f"RANK={rank} does not lie in 0..WORLD_SIZE-1={world - 1}")
    if not torch.distributed.is_initialized():
        backend = "gloo"
        if torch.cuda.is_available():
            if local_rank >= torch.cuda.device_count():
                raise UsageError(f"LOCAL_RANK={local_rank}, but this machine has "
                                 f"{torch.cuda.device_count()} GPUs; start at most that many "
                                 "processes per machine")
            torch.cuda.set_device(local_rank)
            backend = "cpu:gloo,cuda:nccl"
        torch.distributed.init_process_group(backend=backend)
    return current()


def stop() -> None:
    """Leave the process group after every rank got here (no-op without one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def leave() -> None:
    """Leave the process group without waiting for the others (after an error)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def current() -> Place:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return Place()
    return Place(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                 _env_int("LOCAL_RANK", 0))


def device_for(device: torch.device, place: Place) -> torch.device:
    """Under torchrun each process trains on the GPU of its local rank."""
    if place.active and device.type == "cuda":
        return torch.device("cuda", place.local_rank)
    return device


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 and give every rank its result, or raise its UsageError on
    every rank (marked ``shared``, so that only rank 0 prints it). Without a process group
    this is ``fn()``."""
    place = current()
    if not place.active:
        return fn()
    box: list[Any] = [None]
    failure = None
    if place.is_main:
        try:
            box[0] = ("ok", fn())
        except UsageError as err:
            box[0] = ("error", str(err))
        except BaseException as err:  # a bug or an interrupt: stop the others, raise here
            box[0], failure = ("crash", f"{type(err).__name__} on rank 0"), err
    torch.distributed.broadcast_object_list(box, src=0)
    status, value = box[0]
    if failure is not None:
        raise failure
    if status == "error":
        raise shared_error(value)
    if status == "crash":
        raise RuntimeError(f"stopped: {value} (see its output)")
    return value


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every rank (each rank gets the sum); itself without a group."""
    if not current().active:
        return values
    total = values.clone()
    torch.distributed.all_reduce(total)
    return total


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (picklable, small), in rank order, on every rank."""
    place = current()
    if not place.active:
        return [value]
    values: list[Any] = [None] * place.world
    torch.distributed.all_gather_object(values, value)
    return values


def shared_error(error: str | UsageError) -> UsageError:
    """A UsageError that every rank raises together; only rank 0 prints it."""
    error = UsageError(error) if isinstance(error, str) else error
    error.shared = True  # type: ignore[attr-defined]
    return error


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Make every rank's buffers (batch-norm statistics) rank 0's."""
    if current().active:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)
