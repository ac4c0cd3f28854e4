"""The presentation side: everything a run folder shows, made from its results.json (and, for the explorer, its
predictions.jsonl) only, never from a model: report.md and the tables (report.py), report.html (html.py), the
plots (plots.py), writing them all (publish.py), and tables across run folders (compare.py). `ragvsft report RUN`
regenerates them without running anything."""
