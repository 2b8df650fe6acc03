"""The run layer: the one place a run directory is written and read — its files (config.yaml through the config
reader, run.json, summary.json, the fold list, metrics, oof.csv), its checkpoints, and its folds loaded back as
models ready for inference. Training writes a run through it; predict, serve, export, report, audit, soup,
distillation's teachers and the benches read it through it."""
