"""Hydra config tree of the `nitro` apps; a package so that Hydra finds it inside an installed wheel."""
