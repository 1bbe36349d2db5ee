from plugin.cli import app

app(prog_name="shoprank")
