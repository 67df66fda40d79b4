"""Segmenting slides: which slides (`inputs`), with what (`options`), a slide's three stages (`stages`:
`plan_slide`, `infer_slide`, `finish_slide`, and `segment_slide` running them in turn), whether a slide runs
at all (`skip.decide`), the batch runner that overlaps the stages across slides (`scheduler.segment_many`),
the claims that share a batch among processes (`claims`) and the batch's run log, OUT/run.json (`runlog`).

A slide goes through three stages: plan (open the slide, find tissue on a thumbnail, lay the tile grid and
select tiles), infer (stream the tiles through the pipeline into the stitcher) and finish (write the
outputs). `segment_many` expands folders and list files into slides, opens the backend once, and plans the
next slide and writes the previous one's outputs on a background thread while the current slide's tiles run;
it records every slide in `OUT/run.json` and carries on past failures (each reported with its slide).
"""

from slidefuse.runtime.segment.inputs import (
    SLIDE_EXTENSIONS,
    collect_slides,
    output_dirs,
    read_list_file,
    scan_folder,
    slide_stem,
)
from slidefuse.runtime.segment.options import SegmentOptions, SlideResult, effective_overlap
from slidefuse.runtime.segment.runlog import RUN_LOG, RunLog, read_run_log
from slidefuse.runtime.segment.scheduler import segment_many
from slidefuse.runtime.segment.skip import Decision, decide
from slidefuse.runtime.segment.stages import (
    PlannedSlide,
    StitchedSlide,
    find_tissue,
    finish_slide,
    infer_slide,
    plan_slide,
    plan_tiles,
    segment_slide,
)

__all__ = [
    "RUN_LOG",
    "SLIDE_EXTENSIONS",
    "Decision",
    "PlannedSlide",
    "RunLog",
    "SegmentOptions",
    "SlideResult",
    "StitchedSlide",
    "collect_slides",
    "decide",
    "effective_overlap",
    "find_tissue",
    "finish_slide",
    "infer_slide",
    "output_dirs",
    "plan_slide",
    "plan_tiles",
    "read_list_file",
    "read_run_log",
    "scan_folder",
    "segment_many",
    "segment_slide",
    "slide_stem",
]
