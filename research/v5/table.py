"""Print v2 vs v5 from research/v5/selection.json as Markdown: the rule's three conditions with intervals, each LGG
validation/test patient (original and FLAIR-only slices) and each high-grade case (with its sequences, FLAIR alone).

    python research/v5/table.py research/v5/selection.json
"""

from __future__ import annotations

import json
import sys


def main() -> None:
    d = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "research/v5/selection.json"))
    (a, b) = list(d["models"])
    print(f"CPU: {d['machine']['summary']}; decision: **{d['decision']}**\n")
    print(f"| condition | {a} | {b} | {b} − {a} (95 % CI) | better / worse | the rule |")
    print("|---|---|---|---|---|---|")
    rules = {"lgg_original": "≥ −0.005", "lgg_flair_only": "> 0", "high_grade": "> 0"}
    for k in ("lgg_original", "lgg_flair_only", "high_grade", "high_grade_three_sequences", "high_grade_flair_only"):
        v = d[k]
        ci = v.get("ci95") or v.get("ci95_by_case")
        n = v.get("n") or v.get("n_values")
        print(
            f"| {k.replace('_', ' ')} ({n}) | {v['mean_a']:.3f} | {v['mean_b']:.3f} | {v['mean_difference']:+.3f} "
            f"({ci[0]:+.3f}, {ci[1]:+.3f}) | {v['better']} / {v['worse']} | {rules.get(k, '')} |"
        )
    print(f"\n| LGG patient | {a} original | {b} original | {a} FLAIR only | {b} FLAIR only |")
    print("|---|---|---|---|---|")
    la, lb = d["lgg_patient_dice"][a], d["lgg_patient_dice"][b]
    for p in sorted(la["original"]):
        print(
            f"| {p} | {la['original'][p]:.3f} | {lb['original'][p]:.3f} | {la['flair_only'][p]:.3f} | "
            f"{lb['flair_only'][p]:.3f} |"
        )
    print(f"\n| high-grade case | sequences | {a} with them | {b} with them | {a} FLAIR alone | {b} FLAIR alone |")
    print("|---|---|---|---|---|---|")
    ha = {r["case"]: r for r in d["high_grade_cases"][a]}
    for r in d["high_grade_cases"][b]:
        x = ha[r["case"]]
        print(
            f"| {r['case']} | {', '.join(r['sequences'])} | {x['three_sequences']['dice']:.3f} | "
            f"{r['three_sequences']['dice']:.3f} | {x['flair_only']['dice']:.3f} | {r['flair_only']['dice']:.3f} |"
        )


if __name__ == "__main__":
    main()
