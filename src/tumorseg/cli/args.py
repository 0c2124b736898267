"""Argument types and exit codes the CLI's commands share."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..engines.table import ENGINE_NAMES

if TYPE_CHECKING:
    from ..studies.core import VoxelSize

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


def unit_interval(text: str) -> float:
    """argparse type: a probability threshold in [0, 1]."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{v:g} is outside 0..1")
    return v


def spacing_mm(text: str) -> VoxelSize:
    """argparse type: ROW,COL,SLICE in mm (the rule: ``studies.parse_spacing``)."""
    from ..studies import parse_spacing

    try:
        return parse_spacing(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def channel_list(text: str) -> tuple[int, ...]:
    """argparse type: decoder channels per stage, four or five positive integers."""
    try:
        ch = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if len(ch) not in (4, 5) or min(ch) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: four or five positive channel counts")
    return ch


def add_engine_arg(p) -> None:
    p.add_argument(
        "--engine",
        default=None,
        choices=ENGINE_NAMES,  # the one engine table (engines.table), light to import
        help="inference engine (default: the fastest that passed the model's accuracy check, measured on "
        "this machine once and cached; see `tumorseg engines`)",
    )
