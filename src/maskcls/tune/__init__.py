"""``maskcls tune``: hyperparameter search on Optuna, each trial an ordinary run directory
(:mod:`.space` reads and checks the search space, :mod:`.storage` opens the study's storage,
:mod:`.objective` trains one trial and reports its epochs, :mod:`.study` runs the workers' loop,
:mod:`.outputs` writes trials.csv / best.yaml, :mod:`.page` study.html)."""
