"""`slidefuse view OUT`: a local, read-only web app to review a batch's results in a browser.

catalogue.py  what OUT holds: the run log's slides, each slide's report.json and the files it records (the only
              files the server reads)
tiles.py      Deep Zoom geometry and tile rendering: the slide (slidefuse's own reader, true colours), the mask
              (class colours, fill or outline), the probability heatmap, the QC label image
cache.py      the on-disk tile cache (size bound, least recently used evicted by mtime)
pages.py      the HTML of the cohort and slide pages
app.py        the starlette application (needs the `view` extra)
"""
