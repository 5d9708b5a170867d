#!/usr/bin/env python3
"""Execute notebooks in place and keep their outputs, so readers see plots, tables and generated text.

Cells carrying a test flag from settings.ini (`cuda`, `slow`) are skipped unless named with
--flags, exactly as `nbdev_test` does; cells marked `#| eval: false` never run. A skipped cell keeps the
outputs it has, so refreshing a chapter on a laptop does not erase what a GPU run stored.

    python tools/run_nbs.py nbs/01_norm.ipynb            # refresh one chapter on this machine
    python tools/run_nbs.py --flags cuda nbs/06_*.ipynb   # on a GPU machine, GPU cells too
    python tools/run_nbs.py --no-run nbs/*.ipynb          # only shrink the figures already stored

Stored PNG figures are re-encoded with a 256-colour palette when that is smaller: a matplotlib figure has few
colours, so this usually halves it with no visible change, and keeps the notebooks light.

Run `nbdev_clean` afterwards: it strips execution counts and metadata but keeps the outputs.
"""
import argparse, base64, io, sys
from pathlib import Path
from PIL import Image
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from fastcore.xtras import working_directory
from nbdev.config import get_config
from nbdev.process import NBProcessor


def shrink_png(data: str) -> str:
    "A base64 PNG re-encoded with an adaptive 256-colour palette, if that is smaller."
    image = Image.open(io.BytesIO(base64.b64decode(data))).convert('RGBA')
    out = io.BytesIO()
    image.quantize(256, method=Image.Quantize.FASTOCTREE).save(out, format='PNG', optimize=True)
    smaller = base64.b64encode(out.getvalue()).decode()
    return smaller if len(smaller) < len(data) else data


def shrink_figures(nb):
    for cell in nb.cells:
        for output in cell.get('outputs', []):
            data = output.get('data', {})
            if 'image/png' in data: data['image/png'] = shrink_png(''.join(data['image/png']))


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
        if src.cell_type == 'code' and not skip(out):  # a skipped cell (a GPU cell on a CPU) keeps its stored outputs
            src.outputs, src.execution_count = out.get('outputs', []), None
    shrink_figures(raw)
    write_nb(raw, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('notebooks', nargs='+', type=Path)
    p.add_argument('--flags', default='', help='space separated test flags to run as well')
    p.add_argument('--no-run', action='store_true', help='do not execute: only shrink the stored figures')
    a = p.parse_args()
    skip_flags = set(get_config().tst_flags.split()) - set(a.flags.split())
    for nb in a.notebooks:
        if a.no_run:
            raw = read_nb(nb)
            shrink_figures(raw)
            write_nb(raw, nb)
            continue
        print(f'running {nb}', flush=True)
        run_nb(nb.resolve(), skip_flags)


if __name__ == '__main__':
    sys.exit(main())
