"""``maskcls audit``: rank the labels that a k-fold run's out-of-fold predictions contradict, show
them, and hand back a fixes file for the user to review (:mod:`.inputs` reads and checks the run,
:mod:`.findings` ranks, :mod:`.outputs` writes audit.csv / fixes.csv, :mod:`.page` audit.html)."""
