#!/usr/bin/env python
"""Render the benchmark results in benchmarks/results/ as markdown tables and matplotlib plots.

    python benchmarks/render.py

Reads flops.json, cpu-engine.json, cpu-compare.json, cpu-slide*.json (from run_cpu.py or `slidefuse bench
slide --json`), memory.json / tissue_scaling.json (the runtime's benchmarks) and gpu-*.json (from run_gpu.py)
when present; writes results/tables.md, results/cpu-throughput.png and, with GPU results,
results/gpu-throughput.png; and replaces the text between `<!-- results:start -->` and `<!-- results:end -->`
in docs/benchmarks.md (the one page that shows the results) with the tables. Absolute paths in the recorded
commands (scratch folders of the machine that ran them) are shown by their names only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("render")

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/`'\"]+/)*([^\s/`'\"]+)")


def command_text(command: str | None, missing: str = "None") -> str:
    """A recorded command as shown in the tables: absolute paths (scratch folders of the machine that ran it)
    shortened to their last component, e.g. `/tmp/sfbench/slide_12000_30pct.tif` -> `slide_12000_30pct.tif`."""
    return missing if command is None else _ABSOLUTE_PATH.sub(r"\1", command)


def load(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def num(x: float | None, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def load_text(load: list[float] | None) -> str:
    return "n/a" if not load else "/".join(f"{v:.1f}" for v in load)


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def machine_line(m: dict[str, Any]) -> str:
    v = m.get("versions", {})
    isa = f" [{m['cpu_isa_summary']}]" if m.get("cpu_isa_summary") else ""
    ov = f", openvino {v['openvino']}" if v.get("openvino") else ""
    return (f"{m.get('cpu')}{isa} ({m.get('cores')} cores visible, {m.get('ram_gib')} GiB), "
            f"{'GPU ' + m['gpu'] if m.get('gpu') else 'no GPU'}; onnxruntime {v.get('onnxruntime')}, "
            f"torch {v.get('torch')}{ov}; {m.get('date')}")


def cpu_engine_md(doc: dict[str, Any]) -> list[str]:
    runs = doc["runs"]
    first = runs[0]
    peak = first["peak"]
    lines = [f"### CPU engine: {first['model']['encoder']} at {first['model']['tile_size']} px "
             f"({first['flops'].get('gflop_per_tile', 0):.2f} GFLOP/tile)", "",
             f"Hardware: {machine_line(first['machine'])}. Peak: {num(peak['tflops'], '.3f')} TFLOP/s fp32, "
             f"an estimate ({peak['source']}). Command: `{command_text(doc.get('command'))}`.", ""]
    rows = []
    for run in runs:
        for r in run["results"]:
            rows.append([run["backend"]["name"], str(r["batch"]), num(r["p50_ms"], ".1f"), num(r["p95_ms"], ".1f"),
                         num(r["p99_ms"], ".1f"), num(r["tiles_per_s"]), num(r["megapixels_per_s"]),
                         num(r["achieved_tflops"], ".4f"), pct(r["fraction_of_peak"]),
                         num(r["memory"].get("host_rss_mib"), ".0f"), load_text(r.get("load_average"))])
    lines += table(["backend", "batch", "p50 ms", "p95 ms", "p99 ms", "tiles/s", "MP/s", "TFLOP/s",
                    "of peak (est.)", "RSS MiB", "load 1/5/15 min"], rows)
    return lines + [""]


BASELINES = ("torch-eager", "ort-cpu")  # the paths every CPU path's speed-up is taken against


def speedups(results: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{baseline: {path: tiles/s over the baseline's}} in one comparison (None where the baseline did not run)."""
    out: dict[str, dict[str, float | None]] = {}
    for base in BASELINES:
        ref = results.get(base, {}).get("tiles_per_s")
        out[base] = {k: (r["tiles_per_s"] / ref if ref else None) for k, r in results.items()}
    return out


def speedup_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def compare_rows(c: dict[str, Any]) -> list[list[str]]:
    """One row per path of comparison `c`; the fastest path's tiles/s in bold."""
    res = c["results"]
    sp = speedups(res)
    fastest = max(res, key=lambda k: res[k]["tiles_per_s"])
    loads = [x for x in c.get("load_average_per_round", []) if x]
    model = f"{c['model']['encoder']} ({c['flops'].get('gflop_per_tile', 0):.1f} GFLOP/tile)"
    rows = []
    for k, r in res.items():
        precision = (c.get("backends", {}).get(k) or {}).get("precision") or "fp32"
        tps = num(r["tiles_per_s"], ".3f")
        rows.append([model, str(c["batch"]), str(c.get("threads", "")), k, precision,
                     f"{c['rounds']} x {c['iters_per_round']}", num(r["p50_ms"], ".0f"),
                     f"**{tps}**" if k == fastest else tps, speedup_text(sp["torch-eager"][k]),
                     speedup_text(sp["ort-cpu"][k]), pct(r.get("fraction_of_peak")),
                     load_text(loads[-1] if loads else None)])
    return rows


def summary_md(s: dict[str, Any] | None) -> list[str]:
    """The compare summary: the fastest path on the summary model against its targets."""
    if not s:
        return []
    if not s.get("measured"):
        return [f"Summary: {s['model']} {s['tile']} px not measured ({s.get('reason')}).", ""]
    parts = [f"{speedup_text(t['speedup'])} {t['against']} (target >= {t['min_speedup']:g}x: "
             f"**{'pass' if t['pass'] else 'fail'}**; same run {speedup_text(t['same_run'])}, against its best "
             f"batch {speedup_text(t['vs_baseline_best_batch'])})" for t in s["targets"]]
    return [f"Summary: the fastest CPU path on {s['model']} {s['tile']} px is **{s['fastest']}** at batch "
            f"{s['batch']}, {s['threads']} threads ({num(s['tiles_per_s'], '.3f')} tiles/s): " + "; ".join(parts)
            + f". Speed-up = {s['rule'].split('= ', 1)[-1]}.", ""]


def compare_md(doc: dict[str, Any]) -> list[str]:
    comps = doc["comparisons"]
    lines = ["### CPU paths against torch eager and ort-cpu fp32: same model, tiles, batch and threads, one "
             "interleaved run per plan", "",
             f"Hardware: {machine_line(doc['machine'])}. Each round times every path in turn, so load changes hit "
             "all of them; the speed-ups are a path's tiles/s over torch eager's and over ort-cpu fp32's in the "
             f"same run (> 1: faster). ov-cpu runs in {doc.get('ov_cpu_mode', 'latency mode')}. "
             f"Command: `{command_text(doc.get('command'))}`.", ""]
    int8 = doc.get("int8") or {}
    if int8:
        first = next(iter(int8.values()))
        lines += [f"INT8 rows run model.int8.onnx ({first.get('method')} calibration on "
                  f"{first.get('calibration_tiles')} tissue tile(s) of {first.get('slide')}), not gated: "
                  f"{first.get('note')}.", ""]
    rows = [row for c in comps for row in compare_rows(c)]
    lines += table(["model", "batch", "threads each", "path", "precision", "rounds x calls", "p50 ms", "tiles/s",
                    "x torch eager", "x ort-cpu fp32", "of fp32 CPU peak (est.)", "load 1/5/15 min"], rows)
    skipped = {k: v for c in comps for k, v in (c.get("skipped") or {}).items()}
    lines += [""] + [f"Not run: {k}: {v}." for k, v in skipped.items()] + ([""] if skipped else [])
    return lines + summary_md(doc.get("summary"))


def slide_md(doc: dict[str, Any]) -> list[str]:
    s, m = doc["summary"], doc["model"]
    n = len(doc.get("slides", [])) or 1
    what = (f"a real slide: {Path(doc['slide']).name}" if n == 1 else
            f"{n} slides as one batch ({doc['slide']}; slides overlapped: "
            f"{'yes' if doc['settings'].get('overlap_slides') else 'no, one at a time'})")
    lines = [f"### End to end on {what}, {m['encoder']}, {doc['backend']['name']}", "",
             f"Hardware: {machine_line(doc['machine'])}. Model {m['encoder']} at {m['tile_size']} px, "
             f"{m['mpp']:g} um/px; backend {doc['backend']['name']}, batch {doc['settings']['batch_size']}, "
             f"{doc['settings']['workers']} reader threads; median of {doc['settings']['repeats']} run(s); load "
             f"{load_text(doc['machine'].get('load_average'))} before, "
             f"{load_text(doc.get('load_average_after'))} after. "
             f"Command: `{command_text(doc.get('command'), 'n/a')}`.", ""]
    lines += table(["tiles run", "end to end tiles/s", "pipeline tiles/s", "engine only tiles/s",
                    "end-to-end / engine", "pipeline / engine"],
                   [[str(s["tiles_run"]), num(s["end_to_end_tiles_per_s"]), num(s["pipeline_tiles_per_s"]),
                     num(s["engine_tiles_per_s"]), f"**{num(s['end_to_end_to_engine_ratio'], '.3f')}**",
                     f"**{num(s['pipeline_to_engine_ratio'], '.3f')}**"]])
    lines += ["", "Seconds per stage (the median run; read/decode/resample is one merged stage, summed over "
                  "reader threads, and overlaps inference):", ""]
    st = s["stages_s"]
    lines += table(list(st), [[num(v) for v in st.values()]])
    return lines + [""]


def flops_md(doc: dict[str, Any]) -> list[str]:
    peak = doc["peak"]
    lines = [f"### FLOPs per {doc['tile']} px tile, counted (encoder + shared decoder, {doc['num_classes']} classes)",
             "", "torch.utils.flop_counter on the meta device, multiply-add = 2 FLOPs; matmuls, convolutions and "
             "attention counted. The last column is the ceiling an H100 SXM at its dense bf16 peak "
             f"({peak['tflops']:.0f} TFLOP/s) would allow: no run can be faster.", ""]
    rows = [[r["id"], r["architecture"], str(r["patch_size"]), num(r["gflop_per_tile"], ".1f"),
             num(r["encoder_gflop"], ".1f"), num(r["decoder_gflop"], ".1f"),
             num(r["h100_bf16_peak_tiles_per_s"], ".0f")] for r in doc["rows"]]
    lines += table(["id", "architecture", "P", "GFLOP/tile", "encoder GFLOP", "decoder GFLOP",
                    "H100 bf16 peak-limited tiles/s"], rows)
    return lines + [""]


def _memory_row(name: str, memory: dict[str, Any]) -> list[str]:
    runs = memory.get("runs") or []
    peaks = ", ".join(f"{r['size'] // 1000}k {r['peak_rss_kib'] / 1024:.0f} MiB" for r in runs)
    spread = memory.get("peak_rss_max_over_min")
    result = f"peak RSS ratio {num(memory.get('peak_rss_ratio'), '.3f')} ({peaks}"
    result += f"; largest / smallest {num(spread, '.3f')})" if spread is not None and len(runs) > 2 else ")"
    return [name, memory.get("target", ""), result, "pass" if memory.get("pass") else "fail",
            f"`{command_text(memory.get('command'))}`", load_text((memory.get("machine") or {}).get("load_average"))]


def runtime_md(memory: dict[str, Any] | None, segment_memory: dict[str, Any] | None,
               *tissues: dict[str, Any] | None) -> list[str]:
    """Headlines of the runtime's own benchmarks (bench_memory.py, bench_tissue_scaling.py), as they report them."""
    rows = []
    if memory:
        rows.append(_memory_row("memory against slide size (the streaming part)", memory))
    if segment_memory:
        rows.append(_memory_row("memory against slide size (the whole `slidefuse segment` process)", segment_memory))
    for tissue in tissues:
        if not tissue:
            continue
        depth = (tissue.get("settings") or {}).get("model_depth") or 0
        model = (f"test model made costly (depth {depth})" if depth else
                 "near-free test model (fixed per-slide costs dominate)")
        rows.append([f"cost against tissue fraction, {model}", tissue.get("target", ""),
                     f"speed-up {num(tissue.get('speedup_end_to_end'), '.2f')} end to end, "
                     f"{num(tissue.get('speedup_pipeline'), '.2f')} pipeline",
                     "pass" if tissue.get("pass") else "fail", f"`{command_text(tissue.get('command'))}`",
                     load_text((tissue.get("machine") or {}).get("load_average"))])
    if not rows:
        return []
    lines = ["### Runtime scaling (the runtime's benchmarks; details in their JSON)", ""]
    lines += table(["benchmark", "target", "result", "verdict", "command", "load 1/5/15 min"], rows)
    return lines + [""]


def gpu_md(doc: dict[str, Any]) -> list[str]:
    m = doc["machine"]
    peak = (doc.get("peak_table") or {}).get("bf16", {})
    lines = [f"### GPU engine: {doc['device']}", "",
             f"Hardware: {machine_line(m)}; peak {peak.get('tflops')} TFLOP/s bf16 dense ({peak.get('source')}). "
             "io=host is the runtime's contract (host uint8 in, host float32 out); io=device keeps tensors on "
             "the GPU.", ""]
    best_rows = []
    for model in dict.fromkeys(r["model"] for r in doc["rows"]):
        ok = [r for r in doc["rows"] if r["model"] == model and r.get("status") != "oom"]
        for io in ("host", "device"):
            cands = [r for r in ok if r["io"] == io]
            if not cands:
                continue
            b = max(cands, key=lambda r: r["tiles_per_s"])
            frac = b.get("fraction_of_peak")
            best_rows.append([model, io, b["mode"], str(b["batch"]), num(b["tiles_per_s"], ".1f"),
                              num(b["achieved_tflops"], ".1f"), pct(frac),
                              "n/a" if frac is None else ("yes" if frac >= 0.5 else "no")])
    lines += ["Best row per model and IO (fraction of the dense peak of the precision that ran):", ""]
    lines += table(["model", "io", "mode", "batch", "tiles/s", "TFLOP/s", "of peak", "at least half?"], best_rows)
    lines += ["", "All rows:", ""]
    rows = []
    for r in doc["rows"]:
        if r.get("status") == "oom":
            rows.append([r["model"], r["mode"], "", str(r["batch"]), "out of memory", "", "", "", "", ""])
            continue
        gflop = doc["flops"][r["model"]]["total"] / 1e9
        ceiling = (r["peak_tflops"] * 1e12 / (gflop * 1e9)) if r.get("peak_tflops") else None
        rows.append([r["model"], r["mode"], r["io"], str(r["batch"]), num(r["p50_ms"], ".1f"),
                     num(r["tiles_per_s"], ".1f"), num(ceiling, ".0f"), num(r["achieved_tflops"], ".1f"),
                     pct(r["fraction_of_peak"]), num(r.get("device_max_allocated_mib"), ".0f")])
    lines += table(["model", "mode", "io", "batch", "p50 ms", "tiles/s", "peak-limited tiles/s", "TFLOP/s",
                    "of peak", "GPU MiB"], rows)
    return lines + [""]


def plot_compare(ax: Any, comps: list[dict[str, Any]]) -> None:
    """Grouped bars: tiles/s of every path per plan (log scale), the fastest path's speed-up over torch eager above
    each group."""
    keys = list(dict.fromkeys(k for c in comps for k in c["results"]))
    labels = [f"{c['model']['encoder']}\nbatch {c['batch']}\n{c.get('threads', '?')} thr" for c in comps]
    width = 0.8 / len(keys)
    for i, k in enumerate(keys):
        xs = [j + (i - (len(keys) - 1) / 2) * width for j, c in enumerate(comps) if k in c["results"]]
        ax.bar(xs, [c["results"][k]["tiles_per_s"] for c in comps if k in c["results"]], width, label=k)
    for j, c in enumerate(comps):
        res = c["results"]
        fastest = max(res, key=lambda k: res[k]["tiles_per_s"])
        ratio = speedups(res)["torch-eager"][fastest]
        if ratio is not None:
            ax.annotate(f"{fastest}\nx{ratio:.2f}", (j, res[fastest]["tiles_per_s"]), ha="center", va="bottom",
                        fontsize=7)
    ax.set_xticks(range(len(comps)), labels)
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * 2)  # room for the labels above the bars
    ax.set_ylabel("tiles / s (log)")
    ax.set_title("CPU paths, one interleaved run per plan (x = fastest / torch eager)", fontsize=9)
    ax.legend(fontsize=7)


def plot_cpu(engine: dict[str, Any] | None, compare: dict[str, Any] | None, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if engine is None and compare is None:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    if engine is not None:
        ax = axes[0]
        for run in engine["runs"]:
            xs = [r["batch"] for r in run["results"]]
            ys = [r["tiles_per_s"] for r in run["results"]]
            ax.plot(xs, ys, marker="o", label=run["backend"]["name"])
        m = engine["runs"][0]
        ax.set_title(f"{m['model']['encoder']} {m['model']['tile_size']} px on {m['machine']['cpu']} "
                     f"({m['machine']['cores']} cores)", fontsize=9)
        ax.set_xlabel("batch")
        ax.set_ylabel("tiles / s")
        ax.set_xscale("log", base=2)
        ax.legend()
    else:
        axes[0].axis("off")
    if compare is not None:
        plot_compare(axes[1], compare["comparisons"])
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_gpu(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in doc["rows"]))
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = [r for r in doc["rows"] if r["model"] == model and r.get("status") != "oom" and r["io"] == "host"]
        for mode in dict.fromkeys(r["mode"] for r in rows):
            pts = sorted((r["batch"], r["tiles_per_s"]) for r in rows if r["mode"] == mode)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=mode)
        bf16 = (doc.get("peak_table") or {}).get("bf16", {}).get("tflops")
        if bf16:
            ceiling = bf16 * 1e12 / doc["flops"][model]["total"]
            ax.axhline(ceiling, color="k", ls="--", lw=1, label=f"bf16 peak limit {ceiling:.0f}")
            ax.axhline(ceiling / 2, color="grey", ls=":", lw=1, label="half of it")
        ax.set_xscale("log", base=2)
        ax.set_title(f"{model} 512 px on {doc['device']} (io=host)", fontsize=9)
        ax.set_xlabel("batch")
        ax.set_ylabel("tiles / s")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(results: Path, readme: Path | list[Path] | None) -> str:
    """Write tables.md and the plots into `results`; splice the tables into each `readme` (between the
    results markers, image links made relative to that README). Returns the markdown."""
    engine, compare = (load(results / n) for n in ("cpu-engine.json", "cpu-compare.json"))
    md: list[str] = []
    flops = load(results / "flops.json")
    if flops:
        md += flops_md(flops)
    if compare:
        md += compare_md(compare)
    if engine:
        md += cpu_engine_md(engine)
    for extra in sorted(results.glob("cpu-slide*.json")):
        doc = json.loads(extra.read_text())
        if doc.get("kind") == "slide":
            md += slide_md(doc)
    md += runtime_md(load(results / "memory.json"), load(results / "memory-segment.json"),
                     load(results / "tissue_scaling.json"),
                     *(load(p) for p in sorted(results.glob("tissue_scaling_depth*.json"))))
    if plot_cpu(engine, compare, results / "cpu-throughput.png"):
        md += [f"![CPU throughput]({results.name}/cpu-throughput.png)", ""]
    gpus = sorted(results.glob("gpu-*.json"))
    for g in gpus:
        doc = json.loads(g.read_text())
        md += gpu_md(doc)
        png = results / f"{g.stem}-throughput.png"
        plot_gpu(doc, png)
        md += [f"![GPU throughput]({results.name}/{png.name})", ""]
    if not gpus:
        md += ["### GPU", "", "**Not measured on a GPU yet.** "
               "`make gpu-check` is the prepared check for an H100/H200 machine (tools/gpu_check.py: the `gpu` "
               "tests, `benchmarks/run_gpu.py` on phikon and uni, and `slidefuse bench slide` with torch on CUDA "
               "and with `null` on a 16k slide, in 8 minutes; `make gpu-check-dry-run` runs it on the CPU). "
               "Its results go under `benchmarks/results/`, and `python benchmarks/render.py` fills this in.", ""]
    text = "\n".join(md)
    (results / "tables.md").write_text(text + "\n")
    readmes = [] if readme is None else [readme] if isinstance(readme, Path) else readme
    for path in readmes:
        body = path.read_text() if path.exists() else ""
        if START in body and END in body:
            rel = os.path.relpath(results.resolve(), path.resolve().parent)
            here = text.replace(f"]({results.name}/", f"]({rel}/")
            head, rest = body.split(START, 1)
            new = head + f"{START}\n{here}\n{END}" + rest.split(END, 1)[1]
            path.write_text(new)
            log.info("updated %s", path)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=HERE / "results", help="results folder [%(default)s]")
    p.add_argument("--readme", type=Path, action="append", default=None,
                   help="markdown file whose results block to update (repeatable) [docs/benchmarks.md]")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(render(args.results, args.readme or [HERE.parent / "docs" / "benchmarks.md"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
