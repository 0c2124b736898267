"""The CLI's training-lab commands: train (recipes, sources, architecture, context), evaluate, export.
The only front end that imports `train`; it needs the train extra."""

from __future__ import annotations

import argparse
import json
import sys

from .args import EXIT_OK, add_engine_arg, channel_list, unit_interval


def add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a U-Net/ResNet50 on slice folders and NIfTI cases",
        description="Train on kaggle_3m-style or images/+masks/ folders and NIfTI case folders (BraTS layout), "
        "one source or several mixed by weight. Resumable.",
    )
    from ..train.config import LOSSES, defaults

    d = defaults()
    _add_data_args(p, d)
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs, split)")
    p.add_argument(
        "--recipe",
        default=None,
        metavar="FILE",
        help="take the settings from this recipe (recipes/*.json, or a run's train_config.json); flags given here "
        "still win, and --data/--out always come from the command line",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"maximum epochs (default {d['epochs']}; with --resume: keep the run's)",
    )
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--image-size", type=int, default=d["image_size"])
    p.add_argument("--patch-size", type=int, default=d["patch_size"], help="training patch size (<= image size)")
    p.add_argument(
        "--samples-per-epoch",
        type=int,
        default=d["samples_per_epoch"],
        help="patches per epoch (0: number of training slices)",
    )
    p.add_argument("--fg-fraction", type=float, default=d["fg_fraction"], help="share of patches centred on tumour")
    p.add_argument(
        "--loss",
        default=d["loss"],
        choices=LOSSES,
        help="training loss (default: %(default)s)",
    )
    p.add_argument(
        "--aug",
        default=d["aug"],
        choices=["v1", "v2"],
        help="augmentation: v1 geometry+intensity; v2 adds sequence dropout, skull-strip, bias field, "
        "noise, wider scale (default: %(default)s)",
    )
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after this much wall time in all, keeping the best model (default: no limit; with --resume: "
        "keep the run's, or give a larger budget to continue a run its budget stopped)",
    )
    p.add_argument(
        "--schedule",
        default=d["schedule"],
        choices=["constant", "cosine", "cosine-time"],
        help="learning rate: constant, cosine over the epochs, or cosine over --max-minutes of wall time "
        "(ends annealed at the time limit on any hardware)",
    )
    p.add_argument("--patience", type=int, default=d["patience"], help="early-stopping patience in epochs")
    p.add_argument("--device", default=d["device"], help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=d["threads"], help="CPU threads (0: PyTorch default)")
    p.add_argument("--seed", type=int, default=d["seed"])
    _add_selection_args(p, d)
    _add_architecture_args(p, d)
    p.add_argument(
        "--patient-pattern", default=d["patient_pattern"], help="regex with a 'patient' group for generic layouts"
    )
    p.add_argument(
        "--no-amp",
        action="store_true",
        help="train in fp32 (default: bf16 autocast where the CPU has native bf16, or on CUDA)",
    )
    _add_context_args(p, d)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def _add_data_args(p, d: dict) -> None:
    """Where the training slices and cases come from, and how much FLAIR-only input they are given as."""
    p.add_argument(
        "--data",
        required=True,
        action="append",
        metavar="DIR[=WEIGHT]",
        help="dataset folder: kaggle_3m patient folders, images/ + masks/, or NIfTI case folders "
        "(<case>/<case>_flair.nii.gz [+ _t1, _t1c] with <case>_seg.nii.gz; whole tumour = seg > 0). Give it "
        "several times to mix sources; WEIGHT is a source's share of the training patches (default 1 each)",
    )
    p.add_argument(
        "--flair-only",
        type=float,
        default=d["flair_only"],
        help="with --aug v2: a further share of patches given as FLAIR alone (both other channels FLAIR), so "
        "single-sequence studies are trained for (default: %(default)s)",
    )
    p.add_argument(
        "--tie-copies",
        action=argparse.BooleanOptionalAction,
        default=d["tie_copies"],
        help="with --aug v2: a channel that is a copy of FLAIR takes FLAIR's gamma, contrast and noise, so a "
        "FLAIR-only patch stays three identical channels as a FLAIR-only study is fed (default: %(default)s)",
    )
    p.add_argument(
        "--pad-studies",
        type=int,
        default=d["pad_studies"],
        metavar="PX",
        help="pad NIfTI cases' slices with zeros, centred, to this square size before resizing (240: a "
        "brain-cropped BraTS case shown as its full 240 x 240 study; 0: stretch, default %(default)s)",
    )


def _add_architecture_args(p, d: dict) -> None:
    """What the network is and where its weights start."""
    p.add_argument(
        "--encoder-weights", default=d["encoder_weights"], help="none | imagenet | PATH to a ResNet50 state dict"
    )
    p.add_argument(
        "--init-model",
        default=d["init_model"],
        help="start from this tumorseg model file (fine-tuning; keep its --encoder-weights)",
    )
    p.add_argument(
        "--decoder-channels",
        type=channel_list,
        default=d["decoder_channels"],
        help="channels per decoder stage, e.g. 256,128,64,32,16 (the paper's five, ending at full resolution); "
        "four end at half resolution with the logits upsampled: no convolution at full resolution, faster int8",
    )
    p.add_argument(
        "--fresh-lr-mult",
        type=float,
        default=d["fresh_lr_mult"],
        help="parameters that --init-model lacks (e.g. the head of another decoder) learn this many times faster",
    )


def _add_selection_args(p, d: dict) -> None:
    """Which patients train, which validate, and which epoch is kept."""
    p.add_argument(
        "--select",
        default=d["select"],
        choices=["dice", "patients", "last"],
        help="keep the best epoch by pooled validation Dice, or by the per-patient mean on the original and "
        "FLAIR-only slices, or the last epoch (cross-validation: the held-out fold only measures)",
    )
    p.add_argument("--split", default=d["split"], help="reuse this split.json instead of making one")
    p.add_argument(
        "--fold",
        default=d["fold"],
        help="cross-validation over the split's train + val patients (test untouched): i/k trains fold i "
        "of k (from 0) and validates on it; all trains on every one of them with no validation (--select last)",
    )


def _add_context_args(p, d: dict) -> None:
    p.add_argument(
        "--context",
        type=int,
        default=d["context"],
        help="2.5D: FLAIR of this many neighbouring slices each side as extra input channels (0: 2D); "
        "with --init-model of a 2D model, the new channels start at zero (training starts at its function)",
    )
    p.add_argument(
        "--context-share",
        type=float,
        default=d["context_share"],
        help="widening a 2D --init-model (or the ImageNet encoder): each neighbour channel starts with this "
        "share of FLAIR's weights (a lone image still gets the 2D answer; 0: zero weights)",
    )
    p.add_argument(
        "--context-lr-mult",
        type=float,
        default=d["context_lr_mult"],
        help="the neighbour channels' input weights learn this many times faster than the rest",
    )
    p.add_argument(
        "--context-mm",
        type=float,
        default=d["context_mm"],
        help="recorded in the model: at inference, neighbours about this far apart where the spacing is known",
    )


def run_train(a) -> int:
    from ..train.config import TrainConfig
    from ..train.trainer import train

    cfg = TrainConfig(
        data=a.data[0] if len(a.data) == 1 else list(a.data),
        out=a.out,
        epochs=a.epochs if a.epochs is not None else (0 if a.resume else TrainConfig.epochs),
        batch_size=a.batch_size,
        lr=a.lr,
        image_size=a.image_size,
        patch_size=a.patch_size,
        samples_per_epoch=a.samples_per_epoch,
        fg_fraction=a.fg_fraction,
        encoder_weights=a.encoder_weights,
        loss=a.loss,
        schedule=a.schedule,
        patience=a.patience,
        device=a.device,
        seed=a.seed,
        threads=a.threads,
        split=a.split,
        amp=not a.no_amp,
        patient_pattern=a.patient_pattern,
        aug=a.aug,
        max_minutes=a.max_minutes if a.max_minutes is not None else (None if a.resume else TrainConfig.max_minutes),
        init_model=a.init_model,
        context=a.context,
        context_mm=a.context_mm,
        context_share=a.context_share,
        context_lr_mult=a.context_lr_mult,
        select=a.select,
        fold=a.fold,
        decoder_channels=a.decoder_channels,
        fresh_lr_mult=a.fresh_lr_mult,
        flair_only=a.flair_only,
        tie_copies=a.tie_copies,
        pad_studies=a.pad_studies,
        # settings without a flag, which only a recipe sets
        split_fractions=getattr(a, "split_fractions", TrainConfig.split_fractions),
        val_batch_size=getattr(a, "val_batch_size", TrainConfig.val_batch_size),
    )
    path = train(cfg, resume=a.resume)
    print(path)
    return EXIT_OK


def add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate a model on a dataset split",
        description="Pixel-pooled, per-slice and per-patient metrics; see docs for conventions.",
    )
    p.add_argument("--data", required=True)
    p.add_argument("--model", default=None, help="model file (default: the bundled model)")
    p.add_argument("--split", default="test", help="test | val | train | all")
    p.add_argument("--split-file", default=None, help="split.json (default: the model's run split, if known)")
    p.add_argument("--threshold", type=unit_interval, default=None, help="override the model's threshold (0..1)")
    p.add_argument("--json", dest="json_out", default=None, help="write metrics JSON here")
    p.add_argument("--report", default=None, help="write a Markdown report with figures into this folder")
    add_engine_arg(p)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: 0 = all cores)")


def run_evaluate(a) -> int:
    from ..train.evaluation import evaluate, format_table

    res = evaluate(
        a.data,
        model=a.model,
        split=a.split,
        split_file=a.split_file,
        threshold=a.threshold,
        report_dir=a.report,
        engine=a.engine,
        threads=a.threads,
    )
    print(format_table(res["metrics"]))
    if a.json_out:
        from ..imaging.files import atomic_write_bytes

        atomic_write_bytes(a.json_out, (json.dumps(res["metrics"], indent=1) + "\n").encode())
        print(f"metrics written to {a.json_out}", file=sys.stderr)
    return EXIT_OK


def add_export(sub) -> None:
    p = sub.add_parser("export", help="export a model to ONNX")
    p.add_argument("--model", default=None)
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", required=True)
    p.add_argument("--int8-calibration", default=None, help="dataset folder: also write a static int8 model")


def run_export(a) -> int:
    from ..train.export import export_onnx

    for line in export_onnx(a.model, a.out, calibration=a.int8_calibration):
        print(line)
    return EXIT_OK


def recipe_defaults(parser: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """`train --recipe FILE`: the recipe's settings become the train command's defaults (flags still win)."""
    from ..train.config import read_recipe

    recipe = read_recipe(a.recipe)
    if "amp" in recipe:
        recipe["no_amp"] = not recipe.pop("amp")
    parser.commands["train"].set_defaults(**recipe)
