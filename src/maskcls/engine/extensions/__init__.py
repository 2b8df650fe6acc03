"""What plugs into the trainer through its hook points (``engine.trainer.callbacks``): EMA, weight averaging,
distillation and its teachers, soft age targets, the wall-clock budget and the experiment trackers. ``engine.run``
composes them from the config."""
