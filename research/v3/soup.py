"""Average the selected checkpoints of several training runs into one run folder that
scripts/package_model.py packages like any other ("model soup").

    python research/v3/soup.py --run runs/v3d_half --run runs/v3e_run --out runs/v3f_soup
    python research/v3/soup.py --run runs/v3b_ctx --start-of runs/v3b_ctx --out runs/v3g_wise

``--start-of RUN`` adds the point RUN's fine-tune started from (its --init-model, widened as training
widened it) as an ingredient: with RUN itself, the halfway point between start and fine-tune ("WiSE-FT",
Wortsman et al. 2022). It is written to the new folder as start_of_<run>.safetensors, so the soup's record
names a file and its checksum like every other ingredient.

``--model FILE`` adds a packaged model file (the bundled v2, say). ``--combine logits`` builds an ensemble
instead of a soup (``model.logit_mean_of_files``: every member keeps its weights, the logits are averaged;
no common start needed, one forward pass per member):

    python research/v3/soup.py --run runs/v3d_half --model src/tumorseg/models/default.safetensors \\
        --combine logits --out runs/v3h_ens

The runs must share the architecture and the split (the soup is chosen on the same validation
patients as its ingredients). Writes best.safetensors, split.json, log.jsonl (every ingredient's
epochs, tagged with its run: the soup's compute is theirs together) and config.json.
Refuses to write into a folder that already holds a model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tumorseg.errors import ModelFileError
from tumorseg.nn.combine import average_model_files, logit_mean_of_files
from tumorseg.nn.serialise import read_model_file, save_model, start_model
from tumorseg.train.data import load_split


def _write_start(run: Path, out: Path) -> Path:
    """RUN's start point as a model file in ``out``, from the configuration the run recorded."""
    try:
        cfg = json.loads((run / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{run}: no readable config.json ({exc})") from None
    if not cfg.get("init_model"):
        raise ValueError(f"{run}: trained from scratch (no --init-model): its start is random weights")
    net, meta = start_model(cfg["init_model"], 3 + 2 * int(cfg.get("context", 0)), float(cfg.get("context_share", 0)))
    path = out / f"start_of_{run.name}.safetensors"
    save_model(net, path, meta)
    return path


def _sorted(split: dict) -> dict:
    return {k: sorted(split[k]) for k in ("train", "val", "test")}


def _split_of(run: Path) -> dict:
    for name in ("best.safetensors", "split.json", "log.jsonl"):
        if not (run / name).is_file():
            raise ValueError(f"{run}: not a finished training run ({name} missing)")
    return _sorted(load_split(run / "split.json"))  # DatasetError (a ValueError) names a broken split file


def _model_split(path: Path) -> dict | None:
    """The split a packaged model file records (None where it records none)."""
    s = (read_model_file(path)[1].get("training") or {}).get("split")
    if not isinstance(s, dict):
        return None
    if missing := [k for k in ("train", "val", "test") if not isinstance(s.get(k), list)]:
        raise ValueError(f"{path}: its recorded split lacks {missing}")
    return _sorted(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a training run folder (its best checkpoint)")
    ap.add_argument("--start-of", action="append", default=[], help="a run whose start point joins the soup")
    ap.add_argument("--model", action="append", default=[], help="a packaged model file that joins the soup")
    ap.add_argument(
        "--combine", choices=["weights", "logits"], default="weights", help="average weights (soup) or logits"
    )
    ap.add_argument("--out", required=True, help="the new run folder")
    a = ap.parse_args()
    runs, out = [Path(r) for r in a.run], Path(a.out)
    if (out / "best.safetensors").exists():
        sys.exit(f"{out}: already holds best.safetensors; choose another --out")
    try:
        splits = [_split_of(r) for r in runs] + [_model_split(Path(m)) for m in a.model]
        if any(s is not None and s != splits[0] for s in splits[1:]):
            raise ValueError(f"the ingredients' splits differ ({', '.join(a.run + a.model)}): one validation set")
        out.mkdir(parents=True, exist_ok=True)
        files = [r / "best.safetensors" for r in runs] + [Path(m) for m in a.model]
        files += [_write_start(Path(r), out) for r in a.start_of]
        combine = average_model_files if a.combine == "weights" else logit_mean_of_files
        model, meta = combine(files)
    except (ModelFileError, ValueError, OSError) as exc:
        sys.exit(str(exc))
    save_model(model, out / "best.safetensors", meta)
    (out / "split.json").write_text((runs[0] / "split.json").read_text())
    rows = []
    for r in runs:
        lines = (r / "log.jsonl").read_text().splitlines()
        rows += [json.dumps({**json.loads(x), "run": str(r)}) for x in lines if x.strip()]
    (out / "log.jsonl").write_text("\n".join(rows) + "\n")
    key = "soup" if a.combine == "weights" else "ensemble"
    record = {key: [str(f) for f in files], "combine": a.combine, "ingredients": meta["training"][key]}
    (out / "config.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
