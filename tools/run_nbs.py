#!/usr/bin/env python3
"""Execute notebooks in place and keep their outputs, so readers see plots, tables and generated text.

Cells carrying a test flag from settings.ini (`cuda`, `slow`) are skipped unless named with
--flags, exactly as `nbdev_test` does; cells marked `#| eval: false` never run.

    python tools/run_nbs.py nbs/01_norm.ipynb            # refresh one chapter on this machine
    python tools/run_nbs.py --flags cuda nbs/06_*.ipynb   # on a GPU machine, GPU cells too

Run `nbdev_clean` afterwards: it strips execution counts and metadata but keeps the outputs.
"""
import argparse, os, sys
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.process import NBProcessor


def run_nb(path: Path, skip_flags: set[str]):
    nb = NBProcessor(path, process=True).nb  # parses `#|` directives into cell.directives_
    def skip(cell):
        if cell.cell_type != 'code': return True
        directives = getattr(cell, 'directives_', {}) or {}
        if directives.get('eval:', [''])[0].lower() == 'false': return True
        return bool(skip_flags & directives.keys())
    shell = CaptureShell(path, mpl_format='png')  # 1x figures: execnb's default, retina, doubles every PNG
    with working_directory(path.parent):
        shell.run_all(nb, exc_stop=True, preproc=skip)
    raw = read_nb(path)  # write outputs into the unprocessed notebook, keeping its directives as typed
    for src, out in zip(raw.cells, nb.cells):
        if src.cell_type == 'code':
            src.outputs, src.execution_count = out.get('outputs', []), None
    write_nb(raw, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='+', type=Path)
    p.add_argument('--flags', default='', help='space separated test flags to run as well')
    a = p.parse_args()
    skip_flags = set(get_config().tst_flags.split()) - set(a.flags.split())
    for nb in a.notebooks:
        print(f'running {nb}', flush=True)
        run_nb(nb.resolve(), skip_flags)


if __name__ == '__main__':
    sys.exit(main())
