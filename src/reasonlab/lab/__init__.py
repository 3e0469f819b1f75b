"""The experiments built on the library: `reasonlab demo` (demo.py, demo_real.py), the studies
(study.py, study_compute.py, compute_analysis.py), and what shows their results (report.py,
plots.py, tables.py, stages.py). Nothing in the library's core imports this package.

Modules, each importing only those listed before it: compute_analysis (fits and frontiers, no
torch), stages (the progress lines), tables (the studies' results as rows), plots, report (the HTML
page), settings (the demo's options and stage settings), arms (the three methods from one base),
demo_run (a demo run's folder, results and resume), demo_real, demo, study, study_compute."""
