"""normlab's Hydra sweepers: a grid that continues where a killed sweep stopped, and an Optuna search
whose study lives in a database. ``hydra_plugins`` is a namespace package: Hydra imports every
module under it when it looks for plugins, so these modules import nothing heavy at the top.
"""
