"""``python -m plugin``: the ``shoprank`` command line."""

from plugin.cli import app

app(prog_name="shoprank")
