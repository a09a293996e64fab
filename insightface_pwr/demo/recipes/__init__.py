"""The demo's recipes (templates): ``insightface-pwr demo`` copies them into ``OUT/recipes/`` beside a generated
``_data.py`` (the data set, batch and epoch counts of that run), then trains each through the CPU host. They are
the paper's recipes (``recipes/``) at demo scale: same keys, same loader, same hooks. Rerun one by hand with
``insightface-pwr train OUT/recipes/pwr_exp.py``."""
