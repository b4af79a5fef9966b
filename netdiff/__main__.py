"""python -m netdiff: the netdiff command."""
from netdiff.cli import run

if __name__ == "__main__":     # importing the module (pkgutil.walk_packages, docs tools) runs nothing
    run()
