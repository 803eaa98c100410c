"""Model files that do something besides computing, each leaving a file behind when it gets to run.

Each builder writes a file that a real torch loads and runs, so a test can show both halves: with trust
the side effect happens (the file is really hostile), without trust it is refused and nothing happens.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn as nn

SIDE_EFFECT_BYTES = 8  # the literal 8 in the TorchScript below: script cannot close over a global


class WritesAFileInForward(nn.Module):
    """The issue's attack: torch.from_file(shared=True) creates the file and maps it for writing."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        written = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8).fill_(65)
        return self.fc(x.mean(dim=(2, 3))) + 0 * written.float().sum()  # used, or TorchScript drops it as dead


class SavesInForward(WritesAFileInForward):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.save(x, self.target)  # aten::save in TorchScript
        return self.fc(x.mean(dim=(2, 3)))


class PrintsInForward(WritesAFileInForward):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("forward ran", self.target)
        return self.fc(x.mean(dim=(2, 3)))


class WritesAFileWhenLoaded(nn.Module):
    """__setstate__ runs inside torch.jit.load, before any caller could look at the module."""

    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.written = torch.zeros(8, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))

    @torch.jit.export
    def __getstate__(self) -> tuple[str, bool]:
        return self.target, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]) -> None:
        self.target, self.training = state
        self.written = torch.from_file(self.target, shared=True, size=8, dtype=torch.uint8).fill_(65)


TORCHSCRIPT_ATTACKS = (WritesAFileInForward, SavesInForward, PrintsInForward, WritesAFileWhenLoaded)


def hostile_torchscript(attack: type[nn.Module], path: Path, target: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(attack(str(target)).eval()).save(str(path))
    return path


@torch.library.custom_op("imgcls_hostile::touch", mutates_args=())
def touch(x: torch.Tensor, target: str) -> torch.Tensor:
    """A custom operator whose kernel writes a file: what a .pt2 graph may name."""
    Path(target).write_bytes(b"A" * SIDE_EFFECT_BYTES)
    return x.clone()


@touch.register_fake
def _(x: torch.Tensor, target: str) -> torch.Tensor:
    return torch.empty_like(x)


class CallsACustomOperator(nn.Module):
    def __init__(self, target: str):
        super().__init__()
        self.target = target
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(touch(x, self.target).mean(dim=(2, 3)))


def hostile_exported_program(path: Path, target: Path) -> Path:
    program = torch.export.export(CallsACustomOperator(str(target)).eval(), (torch.rand(2, 3, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch"), 2: torch.export.Dim("height"),
                                                   3: torch.export.Dim("width")},))
    with open(path, "wb") as f:
        torch.export.save(program, f)
    return path
