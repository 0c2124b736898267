import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _paired(mean: float, lo: float, hi: float) -> dict:
    return {"mean_difference": mean, "ci95": [lo, hi]}


def test_the_candidates_table_is_read_from_the_result_files(tmp_path):
    """Each candidate with a validation comparison gets one row, in order (v3 before v3b before v3h); test and
    brats-dev columns only where their files exist, a dash otherwise; minus signs as the README prints them."""
    ext = {"summary": {"three_sequences": {"mean_dice": 0.7118}, "flair_only": {"mean_dice": 0.6321}}}
    (tmp_path / "external_brats_dev_v2_int8.json").write_text(json.dumps(ext))
    for tag, orig in (("v3h", 0.0026), ("v3", -0.0371)):
        val = {"original": _paired(orig, -0.0005, 0.0057)}
        val |= {"flair_only": _paired(0.042, 0, 1), "flair_only_stripped": _paired(0.011, 0, 1)}
        (tmp_path / f"robustness_v2_{tag}_val.json").write_text(json.dumps({"paired": val}))
    (tmp_path / "v2_vs_v3h_test.json").write_text(json.dumps({"paired": _paired(0.01166, -0.0107, 0.03652)}))
    out = subprocess.run(
        [sys.executable, str(ROOT / "research/v3/candidates_table.py"), "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert "(v2 0.712 / 0.632)" in out[0] and len(out) == 4
    assert out[2].startswith("| v3 | 2.5D fine-tune") and "| −0.037 (−0.001, +0.006) |" in out[2]
    assert out[2].endswith("| – | – |")
    assert out[3].startswith("| v3h |") and "| +0.012 (−0.011, +0.037) | – |" in out[3]
