"""`nitro tune`: an Optuna study over config keys, scored on the validation split, pruned per epoch, with
its trials run through Hydra's launchers. settings (the search, checked without Optuna), study (storage,
pruning, the trial's side), sweeper (the Hydra sweeper that runs the study), results (the best trial)."""
