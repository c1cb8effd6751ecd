"""``python -m lorainbox``: the same as the ``lorainbox`` command."""

from lorainbox.ui.cli import app

app()
