from agileir.cli import run

run()
