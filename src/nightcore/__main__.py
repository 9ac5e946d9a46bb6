from nightcore.cli.main import run

run()
