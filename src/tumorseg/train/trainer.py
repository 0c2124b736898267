"""The training loop: precision plan, DDP, checkpoints, the run folder and the Trainer."""

from __future__ import annotations

import json
import math
import os
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
from ..files import atomic_write_bytes
from ..metrics import dice_score
from ..modelinfo import ArchSpec, InputSpec
from ..nn.serialise import read_model_file, save_model
from ..nn.unet import build_model
from ..preprocess import context_offsets
from ..version import __version__
from .augment import PatchSampler, augment, augment_for_other_sites
from .config import LOSSES, TrainConfig
from .data import (
    DatasetError,
    LoadedSet,
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
from .losses import _LOSS_FNS, make_loss
from .threshold_sweep import ThresholdSweep

assert tuple(_LOSS_FNS) == LOSSES  # the CLI offers LOSSES (torch-free); each name has its function here


def resolve_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but no CUDA device is available")
    return torch.device(spec)


def _imagenet(x: torch.Tensor) -> torch.Tensor:
    """``preprocess.model_input``'s normalisation on the training device (x already in [0, 1])."""
    from ..preprocess import expand_per_channel

    norm, c = normalisation(True), x.shape[1]
    mean = torch.from_numpy(expand_per_channel(norm["mean"], c)).to(x.device).view(1, c, 1, 1)
    std = torch.from_numpy(expand_per_channel(norm["std"], c)).to(x.device).view(1, c, 1, 1)
    return (x - mean) / std


def prepare_batch(imgs_u8: torch.Tensor, imagenet: bool) -> torch.Tensor:
    """uint8 NHWC -> float NCHW [0,1] (-> ImageNet normalised)."""
    x = imgs_u8.permute(0, 3, 1, 2).float().div_(255.0)
    return _imagenet(x) if imagenet else x


class _Dist:
    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


def _log(msg: str, d: _Dist) -> None:
    if d.main:
        print(msg, file=sys.stderr, flush=True)


def save_checkpoint(path: Path, model, opt, sched_state: dict, extra: dict) -> None:
    """Resume state as one checksummed safetensors file (no pickle)."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for name, v in st.items():
            tensors[f"optim.{idx}.{name}"] = v.detach().cpu().contiguous().reshape(v.shape)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    meta = {
        **extra,
        "param_groups": osd["param_groups"],
        "sched": sched_state,
        "rng_numpy": json.dumps(np.random.get_state()[1].tolist()),
        "rng_python": json.dumps(random.getstate()[1]),
    }
    from ..nn.serialise import tensor_digest

    meta["tensor_sha256"] = tensor_digest(tensors)
    atomic_write_bytes(path, save(tensors, metadata={"tumorseg": json.dumps(meta)}))


def load_checkpoint(path: Path, model, opt) -> dict:
    try:
        tensors, meta = read_model_file(path)
    except ModelFileError as exc:
        raise ModelFileError(f"cannot resume: {exc}") from None
    msd = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model.load_state_dict(msd, strict=True)
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    np_state = np.random.get_state()
    np.random.set_state((np_state[0], np.array(json.loads(meta["rng_numpy"]), dtype=np.uint32), *np_state[2:]))
    py = random.getstate()
    random.setstate((py[0], tuple(json.loads(meta["rng_python"])), py[2]))
    return meta


def precision_plan(device: torch.device, amp: bool, native_bf16: bool | None = None) -> tuple:
    """(autocast dtype or None, memory format, why): bf16 only where the hardware has it.

    On a CPU without bf16 arithmetic, autocast emulates it: a training step took ~7.5 s instead of
    ~1 s on an AVX2-only EPYC. Channels-last is a layout every oneDNN CPU kernel runs natively, and it
    made fp32 training 1.2x faster too on the AVX-512 machine (benchmarks/train_throughput.py measures
    all three on any machine).
    """
    if device.type == "cuda":
        if not amp:
            return None, torch.channels_last, "fp32 (--no-amp)"
        dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return dt, torch.channels_last, f"{str(dt).split('.')[-1]} autocast on CUDA"
    if native_bf16 is None:
        from ..hardware import cpu_info

        native_bf16 = cpu_info().native_bf16
    if not amp:
        return None, torch.channels_last, "fp32 + channels-last (--no-amp)"
    if not native_bf16:
        return (
            None,
            torch.channels_last,
            "fp32 + channels-last: this CPU has no native bf16 (autocast would emulate it)",
        )
    return torch.bfloat16, torch.channels_last, "bf16 autocast + channels-last (native bf16 on this CPU)"


@torch.no_grad()
def validate(
    model,
    val: LoadedSet,
    imagenet: bool,
    device,
    amp_dtype,
    batch: int,
    d: _Dist,
    mem=torch.channels_last,
    context: int = 0,
) -> dict:
    """Pooled Dice at 0.5 and a threshold sweep, and per-patient Dice (3D, at 0.5): the mean over
    patients is what the model comparisons rank by, so training can select on it too."""
    model.eval()
    sweep = ThresholdSweep()
    per_slice = torch.zeros(len(val), 3, dtype=torch.float64)  # tp fp fn at 0.5
    idx = np.arange(d.rank, len(val), d.world)
    for s in range(0, len(idx), batch):
        sel = idx[s : s + batch]
        x = prepare_batch(torch.from_numpy(val.model_channels(sel, context)), imagenet).to(device)
        x = x.contiguous(memory_format=mem)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            prob = torch.sigmoid(model(x).float())[:, 0].cpu()
        y = torch.from_numpy(val.masks[sel])
        sweep.update(prob, y)
        pb = prob >= 0.5
        per_slice[sel] = torch.stack([(pb & y), (pb & ~y), (~pb & y)], 1).flatten(2).sum(2).double()
    d.all_sum(per_slice)
    d.all_sum(sweep.counts)
    model.train()
    patients = [dice_score(*map(float, per_slice[a:b].sum(0))) for a, b in val.groups()]
    return {
        "val_dice": dice_score(*map(float, per_slice.sum(0))),
        "val_dice_by_threshold": sweep.aggregate(),
        "val_dice_per_patient": float(np.mean(patients)) if patients else 0.0,
    }


def patients_score(original: dict, flair_only: dict) -> float:
    """``--select patients``: the per-patient mean over the original and the FLAIR-only slices, the two
    conditions the model comparisons decide on."""
    return (original["val_dice_per_patient"] + flair_only["val_dice_per_patient"]) / 2


def _curve(log_path: Path, png: Path) -> None:
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

    def resumed_config(self, cfg: TrainConfig) -> TrainConfig:
        """The run's own recipe; only where it runs (device, threads), an explicit --epochs and an explicit
        --max-minutes (a run stopped by its time budget on a busy machine may be given more) may change."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.config}: nothing to resume (no config.json in the run folder)")
        saved = json.loads(self.config.read_text())
        for k in ("device", "threads"):
            saved[k] = getattr(cfg, k)
        saved["epochs"] = cfg.epochs or saved["epochs"]  # a cosine schedule re-anneals to a new budget
        if cfg.max_minutes is not None:  # the budget counts the earlier sessions too (minutes_spent)
            saved["max_minutes"] = cfg.max_minutes
        saved["split_fractions"] = tuple(saved["split_fractions"])
        return TrainConfig(**saved)

    def write_history(self, history: list[dict], d: _Dist) -> None:
        atomic_write_bytes(self.log, "".join(json.dumps(r) + "\n" for r in history).encode())
        try:
            _curve(self.log, self.curve)
        except Exception as exc:  # a plot must never stop training
            _log(f"warning: training curve not drawn ({exc})", d)


class Trainer:
    """One training run in hooks: ``setup`` (device, data, model, state), ``train_step``, ``validate``,
    ``on_epoch_end`` (best model, checkpoint, log, stopping), ``state``/``load_state``; ``fit`` runs them."""

    def __init__(self, cfg: TrainConfig, resume: bool = False):
        self.d = _Dist()
        self.run = RunFolder(cfg.out)
        if resume:
            cfg = self.run.resumed_config(cfg)
        elif self.d.main and self.run.checkpoint.exists():
            raise FileExistsError(f"{self.run.out}: already holds a run; use --resume to continue it or another --out")
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
            _log("no checkpoint yet (the run stopped during its first epoch): starting it again", d)
            self.resume = False
        if self.resume:
            self.load_state(load_checkpoint(self.run.checkpoint, self.model, self.opt))
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
            split = split_per_source(cases, cfg, lambda m: _log(m, d))
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
        _log(f"patients: {len(split['train'])} train / {len(split['val'])} val / {len(split['test'])} test", d)
        self.split = split
        self.train_set = load_cases([by_patient[p] for p in split["train"]], cfg.image_size, progress=d.main)
        self.val_set = load_cases([by_patient[p] for p in split["val"]], cfg.image_size, progress=d.main)
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
        if not len(self.val_set):
            _log("no validation patients: every epoch is trained blind and the last one is kept", d)
        elif not self.val_set.masks.any():
            _log("warning: no tumour in the validation patients; validation Dice is uninformative", d)
        _log(f"slices: {len(self.train_set)} train / {len(self.val_set)} val, in RAM", d)

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
            _log(self.rep.summary(), d)
        self.imagenet = cfg.encoder_weights != "none"
        fresh = self._start_from_init_model(model, in_ch) if cfg.init_model else set()
        self.amp_dtype, self.mem, why = precision_plan(self.device, cfg.amp)
        _log(f"precision: {why}", d)
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
        from ..modelinfo import ModelInfo
        from ..nn.serialise import start_model

        init, init_meta = start_model(cfg.init_model, in_ch, cfg.context_share)
        own, start = model.state_dict(), init.state_dict()
        kept = {k for k, v in start.items() if k in own and own[k].shape == v.shape}
        fresh = {n for n, _ in model.named_parameters() if n not in kept}
        if self.resume:
            return fresh
        model.load_state_dict({**own, **{k: start[k] for k in kept}})
        if fresh:
            _log(f"not in {cfg.init_model}, initialised fresh: {', '.join(sorted(fresh))}", d)
        if ModelInfo.from_meta(init_meta).input.normalisation.imagenet != self.imagenet:
            raise ValueError(
                f"{cfg.init_model}: its input normalisation does not match --encoder-weights "
                f"{cfg.encoder_weights!r} (ImageNet-initialised models need ImageNet normalisation)"
            )
        _log(f"initialised from {cfg.init_model}", d)
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
        _log(f"resumed from epoch {meta['epoch']} (best val Dice {self.best:.4f})", self.d)

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
            x, y = augment_for_other_sites(x, y, self.aug_gen, depth, p_flair_only=cfg.flair_only)
        else:
            x, y = augment(x, y, self.aug_gen)
        if self.imagenet:
            x = _imagenet(x)
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
        _log(
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
            _log("run had already finished", d)
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
                _log(f"early stopping: no improvement for {cfg.patience} epochs", d)
                break
            if cfg.max_minutes and self._all_agree(spent() >= cfg.max_minutes):
                out_of_time = True
                _log(f"time budget of {cfg.max_minutes:g} min spent after epoch {epoch}", d)
                break
        if d.enabled:
            dist.destroy_process_group()
        budget = " (stopped by --max-minutes)" if out_of_time else ""
        _log(f"best {self.cfg.select} score {self.best:.4f}; model: {self.run.best}{budget}", d)
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
