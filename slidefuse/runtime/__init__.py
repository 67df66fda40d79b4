"""Running model bundles over slides: readers, tiling, pipeline, backends, outputs. No torch here."""
