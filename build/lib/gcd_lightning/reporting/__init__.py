"""A run's and a folder of runs' results for people: the paper's tables, figures, reports and W&B.

- ``paper``: the paper's published numbers, printed beside ours;
- ``tables``: Tables 2, 3 and 5 and GCD's fixed-budget robustness, laid out once from a list of runs;
- ``report``: one run's ``metrics.json`` and ``report.md`` (its tables from ``tables``);
- ``aggregate``: every finished run below a folder into ``table*.md`` / ``.csv`` (``tables`` again);
- ``figures``: ROC curves, ‖G‖₂ histograms and α sweeps as PNG files;
- ``wandb``: a run's (and an α sweep's) results on a W&B dashboard (its tables from ``tables``).
"""
