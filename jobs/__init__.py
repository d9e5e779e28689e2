"""The checkout's entry points: ``python -m jobs.NAME`` runs ``dae NAME`` (the module dae/commands/NAME.py).
Not installed with the package (pyproject.toml lists only dae): installed, the command is ``dae``."""
