from netdiff.cli import run

run()
