"""Experiments (the top floor): they train through ``ccr_fast.training`` and write docs — the method comparison over
folds (:mod:`.compare`) and the frozen default-selection rule (:mod:`.select`)."""
