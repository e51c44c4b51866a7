"""``python -m invdiff ...`` runs the command line (also under ``torchrun``)."""

from .cli import app

app(prog_name="invdiff")
