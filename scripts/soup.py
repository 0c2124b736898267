"""Average the selected checkpoints of several training runs into one run folder that
scripts/package_model.py packages like any other ("model soup").

    python scripts/soup.py --run runs/v3d_half --run runs/v3e_run --out runs/v3f_soup

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

from tumorseg.model import ModelFileError, average_model_files, save_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", action="append", required=True, help="a training run folder (give two or more)")
    ap.add_argument("--out", required=True, help="the new run folder")
    a = ap.parse_args()
    runs = [Path(r) for r in a.run]
    out = Path(a.out)
    if (out / "best.safetensors").exists():
        sys.exit(f"{out}: already holds best.safetensors; choose another --out")
    splits = []
    for r in runs:
        for name in ("best.safetensors", "split.json", "log.jsonl"):
            if not (r / name).is_file():
                sys.exit(f"{r}: not a finished training run ({name} missing)")
        s = json.loads((r / "split.json").read_text())
        splits.append({k: sorted(s[k]) for k in ("train", "val", "test")})
    if any(s != splits[0] for s in splits[1:]):
        sys.exit(f"the runs' splits differ ({', '.join(map(str, runs))}): a soup needs one validation set")
    try:
        model, meta = average_model_files([r / "best.safetensors" for r in runs])
    except (ModelFileError, ValueError) as exc:
        sys.exit(str(exc))
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "best.safetensors", meta)
    (out / "split.json").write_text((runs[0] / "split.json").read_text())
    rows = []
    for r in runs:
        lines = (r / "log.jsonl").read_text().splitlines()
        rows += [json.dumps({**json.loads(x), "run": str(r)}) for x in lines if x.strip()]
    (out / "log.jsonl").write_text("\n".join(rows) + "\n")
    record = {"soup": [str(r) for r in runs], "ingredients": meta["training"]["soup"]}
    (out / "config.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
