"""Stage check_params: validate the whole params.yaml before any other stage runs.

DVC tracks params key by key, so a misspelt key is tracked by no stage and `dvc repro` would
rerun nothing, leaving the user to believe the edit applied. This stage depends on the whole
file instead: any edit reruns it, a bad one stops the pipeline here with one line, and a good
one rewrites the same constant output, so only the stages whose own keys changed rerun.

Also the command to check params.yaml without running anything:
    python stages/check_params.py params.yaml
"""

import argparse
from pathlib import Path

from transferlab.io import atomic_path
from transferlab.launcher import run_stage
from transferlab.params import load_params

VERDICT = "params.yaml passed the checks of transferlab/params.py\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("params", type=Path)
    ap.add_argument("out", type=Path, nargs="?", help="output: a constant file the stages depend on")
    args = ap.parse_args(argv)
    load_params(args.params)
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(VERDICT)
    print(VERDICT, end="")


if __name__ == "__main__":
    run_stage(main)
