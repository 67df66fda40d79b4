"""The HTML of the viewer's two pages. Every value from OUT is escaped; the slide page's layers are described
in one JSON object that static/slide.js reads."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from slidefuse.view.catalogue import Catalogue, SlideEntry
from slidefuse.view.layers import ClassRow, _dict, class_rows, qc_flags, qc_section

_HEAD = ('<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
         '<link rel="stylesheet" href="/static/style.css"></head><body>')


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _num(v: Any, fmt: str = "{:.4g}") -> str:
    return fmt.format(v) if isinstance(v, int | float) and not isinstance(v, bool) else ""


def _class_names(cat: Catalogue) -> list[str]:
    names: list[str] = []
    for s in cat.slides:
        for c in class_rows(s.report)[1:]:
            if c.name not in names:
                names.append(c.name)
    return names


def _row(s: SlideEntry, names: list[str]) -> str:
    rows = {c.name: c for c in class_rows(s.report)}
    tissue = _dict(s.report, "tissue").get("area_mm2")
    flags = qc_flags(s.report)
    cells = [
        f'<td><img class="thumb" loading="lazy" src="/slide/{s.index}/thumb.jpg" alt=""></td>'
        if s.slide_path is not None else "<td></td>",
        f'<td data-v="{_e(s.display_name)}"><a href="/slide/{s.index}">{_e(s.display_name)}</a></td>',
        f'<td class="status {_e(s.status)}" data-v="{_e(s.status)}">{_e(s.status)}</td>',
        f'<td data-v="{_num(tissue, "{}")}">{_num(tissue)}</td>',
    ]
    for n in names:
        c = rows.get(n)
        a, f = (c.area_mm2, c.fraction) if c is not None else (None, None)
        cells.append(f'<td data-v="{_num(a, "{}")}">{_num(a)}</td>'
                     f'<td data-v="{_num(f, "{}")}">{_num(100 * f if isinstance(f, float) else None, "{:.1f}")}</td>')
    cells.append(f'<td data-v="{s.decode_errors}">{s.decode_errors}</td>')
    cells.append(f'<td data-v="{len(flags)}">{_e(", ".join(flags))}</td>')
    cells.append(f'<td class="error">{_e(s.error or "")}</td>')
    return f'<tr data-status="{_e(s.status)}">' + "".join(cells) + "</tr>"


def cohort_page(cat: Catalogue) -> str:
    """The batch table: one row per slide of the run log."""
    names = _class_names(cat)
    head = ["", "slide", "status", "tissue mm²"]
    for n in names:
        head += [f"{n} mm²", f"{n} %"]
    head += ["decode errors", "QC flags", "error"]
    ths = "".join(f'<th data-col="{i}">{_e(h)}</th>' for i, h in enumerate(head))
    statuses = sorted({s.status for s in cat.slides})
    options = "".join(f'<option value="{_e(s)}">{_e(s)}</option>' for s in statuses)
    summary = '<a href="/summary.csv">summary.csv</a>' if cat.summary is not None else ""
    body = "".join(_row(s, names) for s in cat.slides)
    return (_HEAD.format(title=f"slidefuse: {_e(cat.root.name)}")
            + f'<header><h1>{_e(cat.root.name)}</h1><span>{len(cat.slides)} slide(s)</span> {summary}</header>'
            + '<div class="filters"><input id="filter" type="search" placeholder="filter rows">'
            + f'<select id="status"><option value="">every status</option>{options}</select></div>'
            + f'<table id="cohort"><thead><tr>{ths}</tr></thead><tbody>{body}</tbody></table>'
            + '<script src="/static/cohort.js"></script></body></html>')


def _legend(rows: list[ClassRow]) -> str:
    items = []
    for c in rows[1:]:
        r, g, b = c.colour
        items.append(f'<label class="cls"><input type="checkbox" class="cls-toggle" data-class="{c.index}" checked>'
                     f'<span class="swatch" style="background:rgb({r},{g},{b})"></span>{_e(c.name)} '
                     f'<span class="area">{_num(c.area_mm2)} mm² ({_num(100 * (c.fraction or 0), "{:.1f}")} %)'
                     "</span></label>")
    return "".join(items)


def _card(rep: dict[str, Any] | None) -> str:
    model, bundle, backend = _dict(rep, "model"), _dict(rep, "bundle"), _dict(rep, "backend")
    slide, tissue, tiles = _dict(rep, "slide"), _dict(rep, "tissue"), _dict(rep, "tile_counts")
    items = [
        ("encoder", model.get("encoder")), ("model pixel size", f"{_num(model.get('mpp'))} µm/px"),
        ("tile", model.get("tile_size")), ("weights", _dict(model, "weights").get("kind")),
        ("random weights", model.get("random_weights")), ("bundle", Path(str(bundle.get("path") or "")).name),
        ("bundle digest", str(bundle.get("digest") or "")[:16]), ("signature", bundle.get("signature")),
        ("backend", f"{backend.get('backend', '')} {backend.get('precision', '')} on {backend.get('device', '')}"),
        ("slide size", f"{slide.get('width')} × {slide.get('height')} px"),
        ("slide pixel size", f"{_num(slide.get('mpp'))} µm/px ({slide.get('mpp_source', '')})"),
        ("tissue", f"{_num(tissue.get('area_mm2'))} mm² ({_num(100 * (tissue.get('fraction') or 0), '{:.1f}')} %)"),
        ("tiles run", f"{tiles.get('run')} of {tiles.get('grid')}"),
        ("decode errors", _dict(slide, "decode_errors").get("count", 0)),
        ("seconds", _num(_dict(rep, "timings").get("total"), "{:.2f}")),
    ]
    return "<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items if v is not None) + "</dl>"


def slide_page(s: SlideEntry, config: dict[str, Any]) -> str:
    """One slide: the deep-zoom viewer, its layer controls, the legend, QC flags and the model card."""
    rows = class_rows(s.report)
    qc = qc_section(s.report)
    flags = "".join(f"<li>{_e(f)}</li>" for f in qc_flags(s.report))
    probs = ""
    if config.get("probs"):
        largest = max(rows[1:], key=lambda c: c.area_mm2 or 0.0).index if len(rows) > 1 else -1
        opts = "".join(f'<option value="{c.index}"{" selected" if c.index == largest else ""}>{_e(c.name)}</option>'
                       for c in rows[1:])
        probs = (f'<div class="ctl"><label><input type="checkbox" id="probs-on"> probability of </label>'
                 f'<select id="probs-class">{opts}</select></div>')
    qc_ctl = ('<div class="ctl"><label><input type="checkbox" id="qc-on" checked> QC regions</label>'
              f'<ul class="flags">{flags}</ul></div>') if qc is not None else ""
    files = "".join(f'<li><a href="/slide/{s.index}/file/{_e(n)}">{_e(n)}</a></li>' for n in sorted(s.files))
    error = f'<p class="error">{_e(s.error)}</p>' if s.error else ""
    cfg = json.dumps(config).replace("</", "<\\/")
    return (_HEAD.format(title=f"slidefuse: {_e(s.display_name)}")
            + f'<header><a href="/">← cohort</a><h1>{_e(s.display_name)}</h1>'
            + f'<span class="status {_e(s.status)}">{_e(s.status)}</span></header>{error}'
            + '<main class="slide"><div id="osd"><div id="scalebar"><div class="bar"></div><span></span></div></div>'
            + '<aside><h2>Mask</h2><div class="ctl"><label><input type="checkbox" id="mask-on" checked> overlay'
            + '</label> <select id="mode"><option value="fill">fill</option><option value="outline">outline</option>'
            + '</select></div><div class="ctl"><label>opacity <input type="range" id="opacity" min="0" max="100" '
            + f'value="50"></label></div><div class="legend">{_legend(rows)}</div>{probs}{qc_ctl}'
            + f'<h2>Model and run</h2>{_card(s.report)}<h2>Files</h2><ul>{files}</ul></aside></main>'
            + f'<script id="config" type="application/json">{cfg}</script>'
            + '<script src="/static/openseadragon/openseadragon.min.js"></script>'
            + '<script src="/static/slide.js"></script></body></html>')
