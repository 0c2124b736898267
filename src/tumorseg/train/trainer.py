"""The training loop: the Trainer (setup, steps, validation, epoch end, state), sources and splits."""

from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..errors import ModelFileError
from ..imaging.files import atomic_write_bytes
from ..model.info import ArchSpec, InputSpec, ModelInfo
from ..model.metrics import dice_score
from ..model.preprocess import context_offsets
from ..nn.serialise import save_model
from ..nn.unet import build_model
from ..version import __version__
from .augment import PatchSampler, augment, augment_for_other_sites
from .checkpoints import load_checkpoint, save_checkpoint
from .config import LOSSES, TrainConfig, check_config
from .data import (
    DatasetError,
    check_no_leak,
    discover_sources,
    fold_split,
    load_cases,
    load_split,
    make_split,
    normalisation,
    patient_has_tumour,
    save_split,
    sources_of,
)
from .device import DistContext, log_main, precision_plan, resolve_device
from .losses import LOSS_FNS, make_loss
from .run_folder import RunFolder
from .validation import imagenet_normalise, patients_score, validate

assert tuple(LOSS_FNS) == LOSSES  # the CLI offers LOSSES (torch-free); each name has its function here


class Trainer:
    """One training run in hooks: ``setup`` (device, data, model, state), ``train_step``, ``validate``,
    ``on_epoch_end`` (best model, checkpoint, log, stopping), ``state``/``load_state``; ``fit`` runs them."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.d = DistContext()
        self.run = RunFolder(cfg.out)
        if resume:
            cfg = self.run.resumed_config(cfg)
        elif self.d.main and self.run.checkpoint.exists():
            raise FileExistsError(f"{self.run.out}: already holds a run; use --resume to continue it or another --out")
        check_config(cfg)  # out-of-range settings refused in one line, before anything is allocated
        if not resume:
            self.run.refuse_inputs(cfg)  # no output of the run may replace one of its inputs
        self.cfg, self.resume = cfg, resume
        self.start_epoch, self.best, self.bad_epochs, self.best_thr = 1, -1.0, 0, 0.5
        self.history: list[dict] = []
        self.seconds_before, self.t_fit = 0.0, time.time()  # wall time of earlier sessions; this one's start

    # ---------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, d = self.cfg, self.d
        if d.enabled:
            dist.init_process_group("nccl" if cfg.device != "cpu" and torch.cuda.is_available() else "gloo")
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda" and d.enabled:
            self.device = torch.device("cuda", d.local_rank)
            torch.cuda.set_device(self.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        random.seed(cfg.seed + d.rank)
        np.random.seed(cfg.seed + d.rank)
        torch.manual_seed(cfg.seed + d.rank)
        self._setup_data()
        self._setup_model()
        self.sampler = PatchSampler(
            self.train_set, cfg.patch_size, cfg.fg_fraction, seed=cfg.seed * 1000 + d.rank, context=cfg.context
        )
        self.aug_gen = torch.Generator().manual_seed(cfg.seed * 1000 + d.rank + 1)
        if self.resume and not self.run.checkpoint.exists():
            log_main("no checkpoint yet (the run stopped during its first epoch): starting it again", d)
            self.resume = False
        if self.resume:
            meta = load_checkpoint(self.run.checkpoint, self.model, self.opt)
            if meta["epoch"] > cfg.epochs:
                raise ModelFileError(
                    f"cannot resume: {self.run.checkpoint}: it says epoch {meta['epoch']}, beyond the run's "
                    f"{cfg.epochs} epochs"
                )
            self.load_state(meta)
        self.ddp_model = self.model
        if d.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.steps = max(1, math.ceil((cfg.samples_per_epoch or len(self.train_set)) / (cfg.batch_size * d.world)))

    def _setup_data(self) -> None:
        cfg, d, run = self.cfg, self.d, self.run
        cases = discover_sources(cfg.data, cfg.patient_pattern or None)
        if self.resume:
            split = load_split(run.split)
        else:
            split = split_per_source(cases, cfg, lambda m: log_main(m, d))
        if cfg.fold and not (cfg.split and Path(cfg.split).is_file()):
            raise DatasetError(
                f"--fold {cfg.fold}: needs --split FILE, so that every run of the cross-validation folds the same patients"
            )
        if cfg.fold and not self.resume:  # a resumed run's split.json already is its fold
            split = fold_split(split, cfg.fold, patient_has_tumour(cases))
        check_no_leak(split)
        by_patient = {c.patient: c for c in cases}
        missing = [p for p in split["train"] + split["val"] if p not in by_patient]
        if missing:
            raise DatasetError(f"{cfg.data}: split names patients not found in the data: {missing[:5]}")
        data_meta = [
            str(Path(x.path).resolve()) + ("" if x.weight == 1.0 else f"={x.weight:g}") for x in sources_of(cfg.data)
        ]
        if d.main:
            run.out.mkdir(parents=True, exist_ok=True)
            if not self.resume:
                save_split(
                    split, run.split, {"data": data_meta[0] if len(data_meta) == 1 else data_meta, "seed": cfg.seed}
                )
            atomic_write_bytes(run.config, (json.dumps(asdict(cfg), indent=1) + "\n").encode())
        log_main(f"patients: {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test", d)
        self.split = split
        pad = cfg.pad_studies
        self.train_set = load_cases([by_patient[p] for p in split["train"]], cfg.image_size, d.main, pad)
        self.val_set = load_cases([by_patient[p] for p in split["val"]], cfg.image_size, d.main, pad)
        if cfg.select not in ("dice", "patients", "last"):
            raise ValueError(f"unknown selection {cfg.select!r}; use dice, patients or last")
        if not len(self.val_set) and cfg.select != "last":
            raise DatasetError(
                f"no validation patients to select an epoch on (--select {cfg.select}); use --select last"
            )
        self.val_flair = self.val_set.flair_only() if cfg.select == "patients" else None
        if cfg.aug == "v2":
            self.train_set.with_head_depth()
        elif cfg.aug != "v1":
            raise ValueError(f"unknown augmentation {cfg.aug!r}; use v1 or v2")
        if cfg.flair_only and (cfg.aug != "v2" or not 0 < cfg.flair_only <= 1):
            raise ValueError(f"--flair-only {cfg.flair_only:g}: needs --aug v2 and a share in (0, 1]")
        if cfg.tie_copies and cfg.aug != "v2":
            raise ValueError("--tie-copies: needs --aug v2")
        if cfg.pad_studies < 0:
            raise ValueError(f"--pad-studies {cfg.pad_studies}: a size in pixels, or 0 for no padding")
        if not len(self.val_set):
            log_main("no validation patients: every epoch is trained blind and the last one is kept", d)
        elif not self.val_set.masks.any():
            log_main("warning: no tumour in the validation patients; validation Dice is uninformative", d)
        log_main(f"slices: {len(self.train_set)} train / {len(self.val_set)} val, in RAM", d)

    def _setup_model(self) -> None:
        cfg, d = self.cfg, self.d
        in_ch = 3 + 2 * cfg.context
        model, self.rep = build_model(
            cfg.encoder_weights if not cfg.init_model else "none",
            tuple(cfg.decoder_channels),
            in_channels=in_ch,
            context_share=cfg.context_share,
        )
        if self.rep is not None:
            log_main(self.rep.summary(), d)
        self.imagenet = cfg.encoder_weights != "none"
        fresh = self._start_from_init_model(model, in_ch) if cfg.init_model else set()
        self.amp_dtype, self.mem, why = precision_plan(self.device, cfg.amp)
        log_main(f"precision: {why}", d)
        self.model = model.to(self.device).to(memory_format=self.mem)
        if cfg.fresh_lr_mult == 1.0:
            fresh = set()
        named = list(self.model.named_parameters())  # a fresh head on a trained network learns faster to catch up
        groups = [{"params": [p for n, p in named if n not in fresh], "mult": 1.0}]
        groups += [{"params": [p for n, p in named if n in fresh], "mult": cfg.fresh_lr_mult}] if fresh else []
        self.opt = torch.optim.Adam(groups, lr=cfg.lr)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_fn = make_loss(cfg.loss)

    def _start_from_init_model(self, model, in_ch: int) -> set[str]:
        """Load what fits from ``--init-model`` (another decoder: the rest starts fresh) and return the names
        of the fresh parameters. On resume only the names: they decide the optimiser's groups."""
        cfg, d = self.cfg, self.d
        from ..nn.serialise import start_model

        init, init_meta = start_model(cfg.init_model, in_ch, cfg.context_share)
        own, start = model.state_dict(), init.state_dict()
        kept = {k for k, v in start.items() if k in own and own[k].shape == v.shape}
        fresh = {n for n, _ in model.named_parameters() if n not in kept}
        if self.resume:
            return fresh
        model.load_state_dict({**own, **{k: start[k] for k in kept}})
        if fresh:
            log_main(f"not in {cfg.init_model}, initialised fresh: {', '.join(sorted(fresh))}", d)
        if ModelInfo.from_meta(init_meta).input.normalisation.imagenet != self.imagenet:
            raise ValueError(
                f"{cfg.init_model}: its input normalisation does not match --encoder-weights "
                f"{cfg.encoder_weights!r} (ImageNet-initialised models need ImageNet normalisation)"
            )
        log_main(f"initialised from {cfg.init_model}", d)
        return fresh

    # ---------------------------------------------------------------- state
    def state(self, epoch: int) -> dict:
        return {
            "epoch": epoch,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "best_threshold": self.best_thr,
            "sampler_state": json.dumps(self.sampler.state()),
            "aug_state": json.dumps(self.aug_gen.get_state().tolist()),
            "config": asdict(self.cfg),
            "history": json.dumps(self.history),
            "seconds_spent": self.minutes_spent() * 60,
        }

    def load_state(self, meta: dict) -> None:
        self.history = json.loads(meta.get("history", "[]"))
        self.start_epoch = meta["epoch"] + 1
        self.best, self.bad_epochs = meta["best"], meta["bad_epochs"]
        self.best_thr = meta.get("best_threshold", 0.5)
        self.seconds_before = float(meta.get("seconds_spent", 0.0))
        self.sampler.set_state(json.loads(meta["sampler_state"]))
        self.aug_gen.set_state(torch.tensor(json.loads(meta["aug_state"]), dtype=torch.uint8))
        if self.d.enabled and self.d.rank:
            # Other ranks get their own random streams, offset from the restored ones.
            self.sampler.rng = np.random.default_rng([self.cfg.seed, self.d.rank, self.start_epoch])
        log_main(f"resumed from epoch {meta['epoch']} (best val Dice {self.best:.4f})", self.d)

    # ---------------------------------------------------------------- steps
    def minutes_spent(self) -> float:
        """Wall time of this run so far, earlier sessions of a resumed run included."""
        return self.seconds_before / 60 + (time.time() - self.t_fit) / 60

    def lr_at(self, step: int) -> float:
        """``cosine`` anneals over the epochs; ``cosine-time`` over ``max_minutes`` of wall time, so a run
        ends annealed at its time limit whatever the hardware's speed (runs sharing one GPU)."""
        cfg, total = self.cfg, self.steps * self.cfg.epochs
        if cfg.schedule == "cosine":
            frac = min(step, total) / total
        elif cfg.schedule == "cosine-time":
            frac = min(1.0, self.minutes_spent() / cfg.max_minutes)
        else:
            return cfg.lr
        return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))

    def train_step(self, step: int) -> tuple[float, torch.Tensor]:
        """One optimiser step on one augmented batch: (loss, tp/fp/fn at logit 0)."""
        cfg, device = self.cfg, self.device
        for g in self.opt.param_groups:
            g["lr"] = self.lr_at(step) * g.get("mult", 1.0)
        xb, yb, db = self.sampler.sample(cfg.batch_size)
        # Augment on the training device (a GPU does it in microseconds); random draws stay on the CPU.
        x = xb.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
        y = yb.to(device, non_blocking=True)[:, None].float()
        if cfg.aug == "v2":
            depth = db.to(device)[:, None] if db is not None else None
            x, y = augment_for_other_sites(
                x, y, self.aug_gen, depth, p_flair_only=cfg.flair_only, tie_copies=cfg.tie_copies
            )
        else:
            x, y = augment(x, y, self.aug_gen)
        if self.imagenet:
            x = imagenet_normalise(x)
        x = x.contiguous(memory_format=self.mem)
        with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.ddp_model(x)
        loss = self.loss_fn(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        with self.context_boost():
            self.scaler.step(self.opt)
        self.scaler.update()
        with torch.no_grad():
            pb, yt = logits.detach() > 0, y.bool()
            counts = torch.tensor(
                [(pb & yt).sum().item(), (pb & ~yt).sum().item(), (~pb & yt).sum().item()], dtype=torch.float64
            )
        return float(loss.detach()), counts

    @contextmanager
    def context_boost(self):
        """Around an optimiser step: the neighbour channels' input weights move ``context_lr_mult`` times
        as far as Adam moved them. Adam's step does not depend on the learning rate otherwise, so this is
        exactly a larger learning rate for those weights alone (they share one tensor with the rest)."""
        k, w = self.cfg.context_lr_mult, self.model.encoder.conv1.weight
        if k == 1.0 or not self.cfg.context:
            yield
            return
        before = w.detach()[:, 3:].clone()
        yield
        with torch.no_grad():
            w[:, 3:] += (k - 1.0) * (w[:, 3:] - before)

    def context_weights(self) -> dict:
        """Mean |weight| of the first convolution per input channel: whether the model uses its context."""
        if not self.cfg.context:
            return {}
        w = self.model.encoder.conv1.weight.detach().float().abs().mean(dim=(0, 2, 3))
        return {"conv1_mean_abs": [round(float(x), 4) for x in w]}

    def train_epoch(self, epoch: int) -> tuple[float, torch.Tensor]:
        from tqdm import tqdm

        loss_sum, counts = 0.0, torch.zeros(3, dtype=torch.float64)
        bar = tqdm(
            range(self.steps),
            desc=f"epoch {epoch}/{self.cfg.epochs}",
            disable=not self.d.main,
            leave=False,
            file=sys.stderr,
            mininterval=5,
        )
        for it in bar:
            loss, c = self.train_step((epoch - 1) * self.steps + it)
            loss_sum += loss
            counts += c
            bar.set_postfix(loss=f"{loss_sum / (it + 1):.4f}", dice=f"{dice_score(*map(float, counts)):.3f}")
        bar.close()
        stats = torch.tensor([loss_sum, self.steps], dtype=torch.float64)
        self.d.all_sum(stats)
        self.d.all_sum(counts)
        return float(stats[0] / stats[1]), counts

    def validate(self) -> dict:
        """Validation on the original slices; with ``select=patients`` also FLAIR-only, and the score
        the best epoch is chosen by (``select``): pooled Dice, or the per-patient mean of both."""
        if not len(self.val_set):  # --fold all: nothing to measure
            v = {"val_dice": None, "val_dice_by_threshold": {}}
        else:
            args = (
                self.imagenet,
                self.device,
                self.amp_dtype,
                self.cfg.val_batch_size,
                self.d,
                self.mem,
                self.cfg.context,
            )
            v = validate(self.model, self.val_set, *args)
        v["select"] = v["val_dice"]
        if self.cfg.select == "patients":
            flair = validate(self.model, self.val_flair, *args)
            v["val_flair_only"] = {k: flair[k] for k in ("val_dice", "val_dice_per_patient")}
            v["select"] = patients_score(v, flair)
        return v

    def _all_agree(self, flag: bool) -> bool:
        """True on every rank when it is true on any (each rank reads its own clock)."""
        if not self.d.enabled:
            return flag
        t = torch.tensor([float(flag)], dtype=torch.float64)
        self.d.all_sum(t)
        return bool(t.item() > 0)

    def on_epoch_end(self, epoch: int, row: dict, v: dict) -> None:
        """Keep the best model, commit the checkpoint, rewrite the log from it."""
        if not self.d.main:
            return
        if row["best"]:
            meta = _model_meta(self.cfg, self.rep, epoch, v["val_dice"], self.best_thr, v, self.split)
            save_model(self.model, self.run.best, meta)
        self.history.append(row)
        save_checkpoint(self.run.checkpoint, self.model, self.opt, {"schedule": self.cfg.schedule}, self.state(epoch))
        self.run.write_history(self.history, self.d)
        log_main(
            f"epoch {epoch}: loss {row['train_loss']:.4f} train Dice {row['train_dice']:.3f} "
            f"val Dice {'-' if v['val_dice'] is None else format(v['val_dice'], '.4f')}"
            f"{' *best*' if row['best'] and self.cfg.select != 'last' else ''} ({row['epoch_seconds']:.0f}s)",
            self.d,
        )

    # ---------------------------------------------------------------- the loop
    def fit(self) -> Path:
        cfg, d = self.cfg, self.d
        if cfg.schedule == "cosine-time" and not cfg.max_minutes:
            raise ValueError("--schedule cosine-time anneals over --max-minutes: give it one")
        self.setup()
        if self.resume and (self.bad_epochs >= cfg.patience or self.start_epoch > cfg.epochs):
            log_main("run had already finished", d)
            return self.run.best
        self.model.train()
        self.t_fit, out_of_time = time.time(), False
        # cosine-time spans the run's whole budget, earlier sessions included; otherwise each session's own
        spent = self.minutes_spent if cfg.schedule == "cosine-time" else lambda: (time.time() - self.t_fit) / 60
        for epoch in range(self.start_epoch, cfg.epochs + 1):
            t0 = time.time()
            train_loss, counts = self.train_epoch(epoch)
            train_time = time.time() - t0
            v = self.validate()
            if cfg.select == "last":  # no selection: the newest epoch always counts as the best
                v["select"] = float(epoch)
            improved = v["select"] > self.best
            if improved:
                self.best, self.bad_epochs = v["select"], 0
                if v["val_dice_by_threshold"]:
                    self.best_thr = max(v["val_dice_by_threshold"].items(), key=lambda kv: kv[1])[0]
            else:
                self.bad_epochs += 1
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_dice": dice_score(*map(float, counts)),
                "val_dice": v["val_dice"],
                "val_dice_by_threshold": v["val_dice_by_threshold"],
                **{k: v[k] for k in ("val_dice_per_patient", "val_flair_only", "select") if k in v},
                **self.context_weights(),
                "lr": self.opt.param_groups[0]["lr"],
                "train_seconds": round(train_time, 1),
                "epoch_seconds": round(time.time() - t0, 1),
                "samples": self.steps * cfg.batch_size * d.world,
                "best": improved,
            }
            self.on_epoch_end(epoch, row, v)
            if d.enabled:
                dist.barrier()
            if self.bad_epochs >= cfg.patience:
                log_main(f"early stopping: no improvement for {cfg.patience} epochs", d)
                break
            if cfg.max_minutes and self._all_agree(spent() >= cfg.max_minutes):
                out_of_time = True
                log_main(f"time budget of {cfg.max_minutes:g} min spent after epoch {epoch}", d)
                break
        if d.enabled:
            dist.destroy_process_group()
        budget = " (stopped by --max-minutes)" if out_of_time else ""
        log_main(f"best {self.cfg.select} score {self.best:.4f}; model: {self.run.best}{budget}", d)
        return self.run.best


def split_per_source(cases: list, cfg: TrainConfig, log=print) -> dict[str, list[str]]:
    """Patient-level split of every source. With ``--split FILE`` the file's patients keep their parts; a
    source none of whose patients the file names gets its own seeded split (said in the log), and patients
    of a named source that the file leaves out are not used (counted in the log). Without a file, each
    source is split on its own (``make_split``, stratified by tumour), so every source has its share of
    validation patients."""
    named: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    if cfg.split and Path(cfg.split).is_file():
        named = load_split(cfg.split)
    elif cfg.split:
        raise DatasetError(f"--split {cfg.split}: file not found")
    in_file = {p for part in named.values() for p in part}
    out = {k: list(v) for k, v in named.items()}
    by_source: dict[str, list] = {}
    for c in cases:
        by_source.setdefault(c.source, []).append(c)
    for src, members in by_source.items():
        listed = [c for c in members if c.patient in in_file]
        if listed:
            if len(listed) < len(members):
                log(f"{src}: {len(members) - len(listed)} patients not in {cfg.split}: not used")
            continue
        part = make_split(members, cfg.split_fractions, cfg.seed, patient_has_tumour(members))
        if cfg.split:
            log(f"{src}: none of its patients in {cfg.split}; split on its own (seed {cfg.seed})")
        for k in out:
            out[k] = sorted(out[k] + part[k])
    return out


def train(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train a model; returns the path of the best model file."""
    return Trainer(cfg, resume).fit()


def _model_meta(cfg: TrainConfig, rep, epoch: int, val_dice: float, thr: float, v: dict, split: dict) -> dict:
    imagenet = cfg.encoder_weights != "none"
    inp = InputSpec(context=cfg.context, context_mm=cfg.context_mm if cfg.context else 0.0)
    ctx = [f"FLAIR {o:+d}" for o in context_offsets(cfg.context)]
    return {
        "architecture": {
            **ArchSpec(decoder_channels=tuple(cfg.decoder_channels)).as_meta(),
            "upsampling": "ConvTranspose2d",
            "in_channels": inp.n_channels,
            "out": "1-channel logits",
        },
        "input_size": cfg.image_size,
        "normalisation": normalisation(imagenet),
        "channels": ["pre-contrast", "FLAIR", "post-contrast", *ctx],
        **({"context": inp.context_meta()} if cfg.context else {}),
        "threshold": thr,
        "min_component_pixels": 0,
        "training": {
            "config": asdict(cfg),
            "epoch": epoch,
            "encoder_init": rep.to_dict() if rep else "none",
            "tumorseg_version": __version__,
            "torch_version": torch.__version__,
            "split": split,
        },
        "metrics": {"val_dice": val_dice, "val_dice_by_threshold": v["val_dice_by_threshold"]},
    }
