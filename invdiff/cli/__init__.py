"""The ``invdiff`` command line: the typer app and its commands (:mod:`.commands`), the batch file runner
(:mod:`.batch`), the tasks that build an operator from options (:mod:`.tasks`) and the
demo (:mod:`.demo`).  The top wing: it uses the core, :mod:`invdiff.medical` and
:mod:`invdiff.train`; nothing imports it."""

from .commands import app

__all__ = ["app"]
