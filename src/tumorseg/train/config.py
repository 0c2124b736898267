"""A training run's recipe, torch-free: the CLI takes its defaults from here, training and run records use it."""

from __future__ import annotations

from dataclasses import dataclass, fields

# The training losses by name (the CLI's choices and training's make_loss read this one list).
# image-dice+bce: Dice per patch, averaged over the patches with tumour, so a faint end of a lesion
# a few hundred pixels large weighs as much as a full cross-section (batch Dice weighs by area).
LOSSES = ("dice", "dice+bce", "tversky+bce", "image-dice+bce")


@dataclass
class TrainConfig:
    data: str | list[str]  # a folder, or several "PATH[=WEIGHT]" sources (data.sources_of)
    out: str
    epochs: int = 50
    batch_size: int = 16
    lr: float = 1e-4
    image_size: int = 256
    patch_size: int = 160
    samples_per_epoch: int = 0  # 0: as many patches as training slices
    fg_fraction: float = 0.5
    encoder_weights: str = "none"
    loss: str = "dice"  # one of LOSSES
    aug: str = "v1"  # v1: flip/rotate/scale/intensity; v2: + sequence dropout, skull-strip, bias field, noise
    max_minutes: float | None = 0.0  # stop after this much wall time (0: no limit; None on resume: the run's)
    init_model: str = ""  # a tumorseg model file to start from (fine-tuning); its normalisation is kept
    schedule: str = "constant"  # constant | cosine | cosine-time (over max_minutes of wall time)
    patience: int = 10
    device: str = "auto"
    seed: int = 0
    threads: int = 0  # 0: torch default
    split: str = ""  # path of an existing split.json to reuse
    split_fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)
    amp: bool = True  # half-precision autocast where the hardware runs it natively (precision_plan)
    val_batch_size: int = 16
    patient_pattern: str = ""
    context: int = 0  # 2.5D: FLAIR of this many neighbouring slices each side as extra channels
    context_mm: float = 4.0  # recorded for inference: neighbours about this far apart where spacing is known
    context_share: float = 0.0  # widening a 2D start model: each neighbour takes this share of FLAIR's weights
    context_lr_mult: float = 1.0  # the neighbour channels' input weights learn this many times faster
    select: str = "dice"  # kept epoch: dice (best pooled, original) | patients (best per-patient mean, original +
    # FLAIR-only) | last (no selection: cross-validation folds and a model trained on all patients)
    # cross-validation: i/k trains on fold i of k of the split's train + val patients; all: on all of them
    fold: str = ""
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)  # 5 stages end at full resolution, 4 at half
    fresh_lr_mult: float = 1.0  # parameters the --init-model lacks (another decoder's head) learn this much faster
    flair_only: float = 0.0  # aug v2: a further share of patches made FLAIR-only (sequence dropout to FLAIR alone)
    # aug v2: a channel that is a copy of FLAIR (dropout, a FLAIR-only file, an LGG slice's missing sequence) gets
    # FLAIR's own gamma / contrast / noise draw, so a FLAIR-only input stays three identical channels as at inference
    tie_copies: bool = False
    pad_studies: int = 0  # NIfTI cases padded with zeros, centred, to this square in-plane size before resizing


def defaults() -> dict:
    """Each field's default (the CLI's --help shows these)."""
    return {f.name: f.default for f in fields(TrainConfig) if f.default is not f.default_factory}


# A recipe is how to train, not where: the command line's --data and --out always say where, so a recipe's (or
# a run's own train_config.json's) "data" and "out" are ignored, and "description" is for people.
RECIPE_WHERE = ("data", "out")


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the problem."""


# Each numeric setting's allowed range (lo, hi; both inclusive unless the name is in OPEN_LOW): a recipe or a
# run's flags outside it are refused in one line naming the setting, before anything is allocated.
BOUNDS = {
    "epochs": (1, 100_000),
    "batch_size": (1, 4096),
    "lr": (0.0, 1.0),
    "image_size": (16, 1024),
    "patch_size": (16, 1024),
    "samples_per_epoch": (0, 10_000_000),
    "fg_fraction": (0.0, 1.0),
    "max_minutes": (0.0, 1_000_000.0),
    "patience": (0, 1_000_000),
    "seed": (0, 2**32 - 1),
    "threads": (0, 1024),
    "val_batch_size": (1, 4096),
    "context": (0, 8),
    "context_mm": (0.0, 100.0),
    "context_share": (0.0, 1.0),
    "context_lr_mult": (0.0, 1000.0),
    "fresh_lr_mult": (0.0, 1000.0),
    "flair_only": (0.0, 1.0),
    "pad_studies": (0, 4096),
}
OPEN_LOW = {"lr", "context_mm", "context_lr_mult", "fresh_lr_mult"}  # must be > lo


def setting_problem(name: str, v) -> str | None:
    """What is wrong with one setting's value (None: nothing): the one check recipes and the trainer share."""
    import math

    if name in BOUNDS:
        if v is None and name == "max_minutes":
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"must be a finite number, not {v!r}"
        lo, hi = BOUNDS[name]
        if isinstance(lo, int) and v != int(v):
            return f"must be a whole number, not {v!r}"
        if v < lo or v > hi or (name in OPEN_LOW and v == lo):
            return f"{v!r} is outside {'(' if name in OPEN_LOW else '['}{lo}, {hi}]"
    elif name == "decoder_channels":
        if not isinstance(v, (list, tuple)) or len(v) not in (4, 5):
            return f"must be a list of 4 or 5 whole numbers, not {v!r}"
        if not all(isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 4096 for c in v):
            return f"must be whole numbers in [1, 4096], not {list(v)!r}"
    elif name == "split_fractions":
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            return f"must be three fractions (train, val, test), not {v!r}"
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1 for x in v):
            return f"parts must lie in [0, 1], not {list(v)!r}"
        if abs(sum(v) - 1.0) > 1e-6:
            return f"parts must add up to 1, not {sum(v):g}"
    return None


def check_config(cfg: TrainConfig) -> None:
    """Refuse a run whose settings (from a recipe, a resumed record or flags) are out of range, naming the setting."""
    for f in fields(TrainConfig):
        why = setting_problem(f.name, getattr(cfg, f.name))
        if why:
            raise RecipeError(f"--{f.name.replace('_', '-')}: {why}")


def read_recipe(path) -> dict:
    """A recipe file's settings (``TrainConfig`` fields, JSON): ``tumorseg train --recipe FILE`` takes them as its
    defaults, and flags given on the command line still win. A run's ``train_config.json`` is a recipe too,
    so any run can be repeated from its record. Paths in a recipe (``split``, ``init_model``, ``encoder_weights``)
    are relative to the working directory, as on the command line (the recipes in ``recipes/`` are written for
    the repository root)."""
    import json
    from pathlib import Path

    p = Path(path)
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{p}: recipe not found") from None
    except RecursionError:
        raise RecipeError(f"{p}: not a JSON recipe (nested too deeply)") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RecipeError(f"{p}: not a JSON recipe ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{p}: a recipe is a JSON object of training settings")
    known = {f.name: f for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - set(known) - {"description"})
    if unknown:
        raise RecipeError(f"{p}: unknown settings {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    out, default = {}, defaults()
    for k, v in raw.items():
        if k == "description" or k in RECIPE_WHERE:
            continue
        want = default.get(k)
        if isinstance(want, tuple):
            if not isinstance(v, list) or not all(isinstance(x, (int, float)) for x in v):
                raise RecipeError(f"{p}: {k} must be a list of numbers, not {v!r}")
        elif isinstance(want, bool):
            if not isinstance(v, bool):
                raise RecipeError(f"{p}: {k} must be true or false, not {v!r}")
        elif isinstance(want, str) and not isinstance(v, str):
            raise RecipeError(f"{p}: {k} must be a string, not {v!r}")
        why = setting_problem(k, v)
        if why:
            raise RecipeError(f"{p}: {k} {why}")
        if isinstance(want, tuple):
            v = tuple(v)
        elif isinstance(want, (int, float)) and not isinstance(want, bool) and v is not None:
            v = type(want)(v)
        out[k] = v
    for k in ("init_model",):  # the encoder weights' file is checked where it is loaded
        v = out.get(k)
        if v and not Path(v).is_file():
            raise RecipeError(
                f"{p}: {k} {v!r} not found (paths in a recipe are relative to the working directory, {Path.cwd()})"
            )
    return out
