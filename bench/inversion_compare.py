"""Are two controllers' inversions really different? Paired comparison, with bootstrap confidence
intervals, of `invemb eval inversion --out DIR` folders that inverted the same sentences (same --n,
same sets): each folder after the first is compared with the first, sentence by sentence.

    invemb eval inversion --em runs/em-default --controller runs/controller-default --n 150 --method controller --out reports/a
    invemb eval inversion --em runs/em-default --controller runs/controller-b --n 150 --method controller --out reports/b
    .venv/bin/python bench/inversion_compare.py reports/a reports/b [--method controller]

Prints, per set and metric, each run's value against the reference (the first folder), the
difference and its 95% interval; writes bench/out/inversion_compare.json. One retrain of the same
controller moves token F1 by about 2 points on 50-150 sentences, so compare two seeds of each side
before calling a gain.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from _common import OUT


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folders", nargs="+", type=Path, help="eval inversion --out folders; the first is the reference")
    ap.add_argument("--method", default="controller", help="which method's rows to compare")
    ap.add_argument("--resamples", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=OUT / "inversion_compare.json")
    args = ap.parse_args()
    if len(args.folders) < 2:
        raise SystemExit("give at least two folders: the reference first")

    from invemb.io import atomic_write_json, read_jsonl
    from invemb.inversion.metrics import paired_difference

    reference, *others = args.folders
    report: dict = {"reference": str(reference), "method": args.method, "runs": {}}
    sets = sorted(p.name[len("rows_"):-len(f"_{args.method}.jsonl")] for p in reference.glob(f"rows_*_{args.method}.jsonl"))
    if not sets:
        raise SystemExit(f"{reference}: no rows_*_{args.method}.jsonl (run `invemb eval inversion --out {reference}` first)")
    for other in others:
        report["runs"][str(other)] = {}
        for name in sets:
            path = other / f"rows_{name}_{args.method}.jsonl"
            if not path.exists():
                raise SystemExit(f"{path} is missing: both folders need the same sets")
            res = paired_difference(read_jsonl(path), read_jsonl(reference / f"rows_{name}_{args.method}.jsonl"),
                                    resamples=args.resamples)
            report["runs"][str(other)][name] = res
            print(f"== {name}: {other} against {reference}")
            for metric, r in res.items():
                print(f"  {metric:16s} {r['value']:7.2f} vs {r['reference']:7.2f}   difference {r['difference']:+6.2f}"
                      f"   95% [{r['low']:+6.2f}, {r['high']:+6.2f}]")
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
