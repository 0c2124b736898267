"""A run's folder: its config, log, split, checkpoints and the learning curve."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..imaging.files import atomic_write_bytes, out_touches_input, same_file
from .config import TrainConfig
from .device import DistContext, log_main


def plot_curve(log_path: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not rows:
        return
    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(ep, [r["train_loss"] for r in rows], marker="o")
    ax[0].set(title="training loss", xlabel="epoch")
    ax[1].plot(ep, [r["train_dice"] for r in rows], marker="o", label="train (patches)")
    if any(r["val_dice"] is not None for r in rows):
        ax[1].plot(ep, [r["val_dice"] for r in rows], marker="o", label="validation (full slices)")
    ax[1].set(title="Dice (pooled)", xlabel="epoch", ylim=(0, 1))
    ax[1].legend()
    fig.tight_layout()
    import io as _io

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(png, buf.getvalue())


class RunFolder:
    """The files of one training run; the checkpoint is the commit point, the log is rewritten from it."""

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self.config = self.out / "config.json"
        self.split = self.out / "split.json"
        self.checkpoint = self.out / "last.ckpt.safetensors"
        self.best = self.out / "best.safetensors"
        self.log = self.out / "log.jsonl"
        self.curve = self.out / "curve.png"

    def files(self) -> tuple[Path, ...]:
        return (self.config, self.split, self.checkpoint, self.best, self.log, self.curve)

    def refuse_inputs(self, cfg: TrainConfig) -> None:
        """Outputs never replace inputs: the run folder may not be (or lie inside) a --data folder, and no file the
        run writes may be its --init-model, --split or --encoder-weights. One line naming the setting."""
        from .config import RecipeError
        from .data import sources_of

        why = out_touches_input(self.out, [src.path for src in sources_of(cfg.data)])
        if why:
            raise RecipeError(f"--out {self.out}: {why}; choose a folder outside the training data")
        for name in ("init_model", "split", "encoder_weights"):
            given = getattr(cfg, name, None)
            hit = next((f for f in self.files() if given and same_file(given, f)), None)
            if hit is not None:
                raise RecipeError(
                    f"--{name.replace('_', '-')} {given}: the run would write {hit.name} over it; copy it elsewhere "
                    "or choose another --out"
                )

    def resumed_config(self, cfg: TrainConfig) -> TrainConfig:
        """The run's own recipe; only where it runs (device, threads), an explicit --epochs and an explicit
        --max-minutes (a run stopped by its time budget on a busy machine may be given more) may change."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.config}: nothing to resume (no config.json in the run folder)")
        saved = json.loads(self.config.read_text())
        from dataclasses import fields

        from .config import RecipeError, defaults

        default, may_change = defaults(), {"device", "threads", "epochs", "max_minutes", "data", "out"}
        for f in fields(TrainConfig):  # a flag given beside --resume that the run cannot honour: refused, not ignored
            mine, theirs = getattr(cfg, f.name), saved.get(f.name)
            norm = lambda v: tuple(v) if isinstance(v, list) else v  # noqa: E731
            if f.name in may_change or f.name not in saved or norm(mine) == norm(default.get(f.name)):
                continue
            if norm(mine) != norm(theirs):
                raise RecipeError(
                    f"--{f.name.replace('_', '-')} {mine!r}: a resumed run keeps its own setting ({theirs!r}); "
                    "start a new run (another --out) to change it"
                )
        for k in ("device", "threads"):
            saved[k] = getattr(cfg, k)
        saved["epochs"] = cfg.epochs or saved["epochs"]  # a cosine schedule re-anneals to a new budget
        if cfg.max_minutes is not None:  # the budget counts the earlier sessions too (minutes_spent)
            saved["max_minutes"] = cfg.max_minutes
        saved["split_fractions"] = tuple(saved["split_fractions"])
        return TrainConfig(**saved)

    def write_history(self, history: list[dict], d: DistContext) -> None:
        atomic_write_bytes(self.log, "".join(json.dumps(r) + "\n" for r in history).encode())
        try:
            plot_curve(self.log, self.curve)
        except Exception as exc:  # a plot must never stop training
            log_main(f"warning: training curve not drawn ({exc})", d)
