"""Every paper encoder against its publisher's implementation, at full width (depth 2 by default).

    .venv/bin/python benchmarks/encoder_fidelity.py [--depth 2] [--only uni,hibou-b]

For each encoder the publisher's model (timm with the model card's kwargs, transformers from its config, CONCH
v1.5's position rule; `slidefuse.export.references`) gets random weights, is saved in the publisher's file
format, loaded through slidefuse, and the patch tokens of one random image are compared at 224 px and at the
product's tile sizes (512; 518 and 512 for patch 14). Prints a table and saves
benchmarks/results/encoder-fidelity.json (max |diff| per size, the reference library, versions).
`--table` prints the README's encoder table from the saved JSON and the registry instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from slidefuse.export.references import compare, references, run_sizes  # noqa: E402
from slidefuse.model.registry import PAPER_IDS, get_spec  # noqa: E402

GATE = 1e-5


def _fmt_norm(spec: object) -> str:
    mean, std = spec.mean, spec.std  # type: ignore[attr-defined]
    return f"({', '.join(f'{v:g}' for v in mean)}) / ({', '.join(f'{v:g}' for v in std)})"


def readme_table(result: dict[str, object]) -> str:
    """The README's encoder table: the registry (`slidefuse models`) plus the verification figures."""
    from slidefuse.commands.models import _human, registry_rows

    rows = {r["id"]: r for r in registry_rows(include_test=False)}
    lines = ["| id | architecture | patch | width | params (counted) | paper | checkpoint format | "
             "normalisation mean / std | verified against | max \\|diff\\| 224 px / run tile | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for enc in result["encoders"]:  # type: ignore[attr-defined]
        spec, row = get_spec(enc["encoder"]), rows[enc["encoder"]]
        diffs = enc["max_abs_diff"]
        run = " / ".join(f"{diffs[k]:.1e} ({k})" for k in diffs if k != "224")
        lines.append(f"| `{spec.id}` | {spec.architecture} | {spec.patch_size} | {spec.width} | "
                     f"{_human(row['params'])} | {_human(spec.paper_params)} | {spec.checkpoint_format} | "
                     f"{_fmt_norm(spec)} | {enc['reference']} | {diffs['224']:.1e} / {run} | {spec.note} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=2, help="transformer blocks (full width always)")
    ap.add_argument("--only", default="", help="comma-separated encoder ids [all fifteen]")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "encoder-fidelity.json")
    ap.add_argument("--table", action="store_true", help="print the README table from --out and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(readme_table(json.loads(args.out.read_text())))
        return 0
    import timm
    import torch
    import transformers

    torch.set_num_threads(max(1, torch.get_num_threads()))
    ids = [i for i in args.only.split(",") if i] or list(PAPER_IDS)
    refs = references()
    rows = []
    for encoder_id in ids:
        spec = dataclasses.replace(get_spec(encoder_id), depth=args.depth)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            diffs = compare(encoder_id, spec, Path(tmp), run_sizes(spec))
        row = {"encoder": encoder_id, "reference": refs[encoder_id].library, "pos_resample": spec.pos_resample,
               "width": spec.width, "depth": spec.depth, "max_abs_diff": {str(k): v for k, v in diffs.items()},
               "passed": max(diffs.values()) <= GATE, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        sizes = "  ".join(f"{k} px {v:.1e}" for k, v in diffs.items())
        print(f"{encoder_id:14s} {sizes:48s} {'ok' if row['passed'] else 'FAIL'}  ({row['seconds']} s)  "
              f"vs {row['reference']}", flush=True)
    result = {"gate": GATE, "encoders": rows, "all_passed": all(r["passed"] for r in rows),
              "versions": {"torch": torch.__version__, "timm": timm.__version__,
                           "transformers": transformers.__version__},
              "command": "benchmarks/encoder_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")
    return 0 if result["all_passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
