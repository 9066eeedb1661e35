"""``python -m mtgraph``: the command-line interface, for environments whose scripts folder is not on PATH."""

from mtgraph.cli import main

if __name__ == "__main__":  # importing the module (the docstring tests import every module) runs nothing
    raise SystemExit(main())
