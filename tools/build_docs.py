#!/usr/bin/env python3
"""The docs pipeline as far as it goes without Quarto.

1. nbdev's own processing step (`proc_nbs`: front matter, `show_doc`, directives such as `#| hide` and
   `#| echo: false`, backticked names turned into links) writes the processed notebooks to `_proc/`, exactly
   what `nbdev_docs` hands to Quarto.
2. README.md is rendered from the processed `index.ipynb` as GitHub Markdown (what `nbdev_readme` does with
   Quarto); its figures go to `assets/readme/`.
3. Every processed notebook is rendered to standalone HTML under `_docs/`, named by the `output-file` nbdev's
   front matter gives it (`05_models.ipynb` -> `models.html`), so a browser (or a headless one in a check) can
   load the pages. `tools/check_links.py` then checks every link between them.

Links. nbdev links a backticked name to `{doc_host}{doc_baseurl}/page.html#anchor`, the published site, and the
index links each chapter by its notebook (`06_paged_attention.ipynb`, which Jupyter opens and Quarto rewrites to
the chapter's page). Here both become relative links, which work in a local build and on the published site
alike: `page.html#anchor` between HTML pages, and `nbs/<notebook>.ipynb` in README.md, the file GitHub shows
beside it.

Where Quarto is installed, `nbdev_docs` and `nbdev_preview` build the full site from `nbs/_quarto.yml`.
"""
import ast, re, shutil, sys
from pathlib import Path
from bs4 import BeautifulSoup
from nbconvert import HTMLExporter, MarkdownExporter
from fastcore.foundation import L
from nbdev.config import get_config
from nbdev.doclinks import _build_modidx, patch_name
from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
from nbdev.serve import proc_nbs
import nbformat, yaml


def front_matter(nb) -> dict:
    "The YAML front matter nbdev's processing puts in the first (raw) cell, as a dict."
    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != 'raw' or not first.source.startswith('---'): return {}
    return yaml.safe_load(first.source.strip().strip('-'))


def quarto_links(md: str) -> str:
    'A Quarto link with attributes, `[text](url){key="value"}` (show_doc\'s `source` link), as the HTML nbconvert needs.'
    return re.sub(r'\[([^\]]*)\]\(([^)\s]+)\)\{([^}]*)\}', r'<a href="\2" \3>\1</a>', md)


def quarto_cell_options(nb):
    "Apply what Quarto would: front matter becomes the title, `#| echo: false` hides code, `#|` lines are never shown."
    meta = front_matter(nb)
    if meta: nb.cells[0] = nbformat.v4.new_markdown_cell(f"# {meta.get('title', '')}\n\n> {meta.get('description', '')}")
    for cell in nb.cells:
        if cell.cell_type == 'markdown': cell.source = quarto_links(cell.source)
        if cell.cell_type != 'code': continue
        for out in cell.outputs:
            if 'text/markdown' in out.get('data', {}): out.data['text/markdown'] = quarto_links(out.data['text/markdown'])
        lines = cell.source.splitlines()
        options = [l for l in lines if l.startswith('#|')]
        cell.source = '\n'.join(l for l in lines if not l.startswith('#|'))
        if any(o.replace(' ', '') == '#|echo:false' for o in options) or not cell.source.strip():
            cell.metadata['transient'] = {'remove_source': True}
    return nb


class Links:
    "Where a link to the site (as nbdev writes it) or to a chapter notebook points: a page, a notebook, an anchor."
    def __init__(self, cfg, pages: dict):  # pages: notebook name -> output-file
        self.site = f"{cfg.doc_host.rstrip('/')}{cfg.doc_baseurl.rstrip('/')}/"
        self.pages, self.notebooks = pages, {page: nb for nb, page in pages.items()}

    def relink(self, nb, href):
        "Rewrite every such link in `nb`'s markdown (cells and outputs) to `href(page, notebook, anchor)`."
        pattern = re.compile(rf'\]\(((?:{re.escape(self.site)})?)([\w.-]+?\.(?:html|ipynb))(#[^)\s]*)?\)')
        def sub(m):
            site, name, anchor = m.group(1), m.group(2), m.group(3) or ''
            if not site and name.endswith('.html'): return m.group(0)  # a relative page link is already right
            page, notebook = (name, self.notebooks.get(name)) if site else (self.pages.get(name), name)
            return f']({href(page, notebook, anchor)})'
        def fix(md): return pattern.sub(sub, md)
        for cell in nb.cells:
            if cell.cell_type == 'markdown': cell.source = fix(cell.source)
            for out in cell.get('outputs', []):
                if 'text/markdown' in out.get('data', {}): out.data['text/markdown'] = fix(out.data['text/markdown'])
        return nb


def html_href(page, notebook, anchor):
    # A notebook without a page (not written yet) keeps its name, so check_links.py reports the link as broken.
    return (page or notebook) + anchor


def readme_href(page, notebook, anchor):
    # GitHub shows a notebook but not an anchor inside it, so a README link names the notebook alone.
    return f'nbs/{notebook}' if notebook else page + anchor


def pandoc_id(text: str) -> str:
    "The id pandoc (so Quarto) gives a heading, the one nbdev's links expect: `### Scheduler.schedule` -> `scheduler.schedule`."
    s = re.sub(r'[^\w\s.-]', '', text.strip().lower())
    return re.sub(r'^[^a-z]+', '', re.sub(r'\s+', '-', s)) or 'section'


DEFS = ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef


def source_anchors(nb) -> dict:
    """Cell id -> the anchors nbdev's links use for what the cell defines (`LLM.generate` -> `llm.generate`), found
    as nbdev's own index finds them. nbdev links every exported name, documented by `show_doc` or not: for a name
    without a heading (a private helper, a method of a class shown whole), the link lands on its source."""
    anchors = {}
    for cell in nb.cells:
        if cell.cell_type != 'code' or cell.metadata.get('transient', {}).get('remove_source'): continue
        try: body = ast.parse(cell.source).body
        except SyntaxError: continue  # a cell with IPython magics defines nothing nbdev exports
        names = []
        for tree in body:
            if isinstance(tree, DEFS): names += L(patch_name(tree))
            if isinstance(tree, ast.ClassDef): names += [f'{tree.name}.{t.name}' for t in tree.body if isinstance(t, DEFS)]
        if names: anchors[cell.id] = [n.lower() for n in names]
    return anchors


def add_ids(page: str, source_anchors: dict) -> str:
    "Give headings the ids Quarto gives them (nbconvert keeps case and punctuation), then anchor names at their source."
    soup, seen = BeautifulSoup(page, 'html.parser'), {}
    for h in soup.find_all(re.compile('^h[1-6]$')):
        for a in h.find_all('a', class_='anchor-link'): a.extract()
        if h is soup.h1:  # the page title: Quarto gives it no id, so `#attention` means the `Attention` class, not the top
            del h['id']
            continue
        base = pandoc_id(h.get_text())
        seen[base] = seen.get(base, -1) + 1
        h['id'] = base if not seen[base] else f'{base}-{seen[base]}'  # pandoc numbers repeated headings the same way
        link = soup.new_tag('a', attrs={'class': 'anchor-link', 'href': f"#{h['id']}"})
        link.string = '¶'
        h.append(link)
    for cell_id, names in source_anchors.items():
        cell = soup.find(id=f'cell-id={cell_id}')
        for name in names:
            if name in seen: continue  # a show_doc heading, or an earlier definition, keeps the name
            seen[name] = 0
            cell.insert(0, soup.new_tag('span', attrs={'id': name}))
    return str(soup)


def readme(proc: Path, root: Path, links: Links):
    nb = links.relink(quarto_cell_options(nbformat.read(proc/'index.ipynb', as_version=4)), readme_href)
    nb.metadata.language_info = {'name': 'python'}  # nbdev_clean strips it; it makes the code fences ```python
    body, resources = MarkdownExporter().from_notebook_node(nb)
    body = body.replace('<!-- WARNING: THIS FILE WAS AUTOGENERATED! DO NOT EDIT! -->', '')
    head = '<!-- Generated from nbs/index.ipynb by tools/build_docs.py: edit the notebook. -->\n'
    figs = root/'assets'/'readme'
    shutil.rmtree(figs, ignore_errors=True)
    figs.mkdir(parents=True)
    for name, data in resources.get('outputs', {}).items():
        (figs/name).write_bytes(data)
        body = body.replace(f']({name})', f'](assets/readme/{name})')
    body = body.replace('](../assets/', '](assets/')  # figures the notebooks show from assets/, seen from the root
    (root/'README.md').write_text(re.sub(r'\n{3,}', '\n\n', head + body).strip() + '\n')


def html(proc: Path, out: Path, links: Links):
    shutil.rmtree(out, ignore_errors=True)  # a renamed or deleted chapter must not leave its old page behind
    out.mkdir()
    # Outputs (figures included) are inline in the page anyway. `embed_images` would inline markdown images too, but
    # it re-parses each inline HTML tag alone and so empties show_doc's `<a ...>source</a>` link.
    exporter = HTMLExporter(exclude_input_prompt=True, exclude_output_prompt=True)
    css = (proc/'styles.css').read_text()  # the site's stylesheet, so every page stands alone
    for nb_path in sorted(proc.glob('*.ipynb')):
        nb = nbformat.read(nb_path, as_version=4)
        meta = front_matter(nb)
        nb = links.relink(quarto_cell_options(nb), html_href)
        if meta['output-file'] != 'index.html':  # Quarto's sidebar leads back to the chapter list; here, a link
            nb.cells.insert(0, nbformat.v4.new_markdown_cell('[← nanolearn: all chapters](index.html)'))
        page, _ = exporter.from_notebook_node(nb, resources={'metadata': {'name': meta.get('title', nb_path.stem)}})
        page = page.replace('</head>', f'<style>\n{css}</style>\n</head>', 1)
        dest = out/meta['output-file']
        dest.write_text(add_ids(page, source_anchors(nb)))
        print(f'{nb_path.name} -> {dest}')


def main():
    cfg = get_config()
    refresh_quarto_yml()
    _build_modidx()
    nbdev_sidebar.__wrapped__(path=cfg.nbs_path)
    # force: the cache would keep a deleted chapter's page, and pages whose links point at chapters that changed
    proc = proc_nbs(cfg.nbs_path, n_workers=0, force=True)
    pages = {p.name: front_matter(nbformat.read(p, as_version=4))['output-file'] for p in proc.glob('*.ipynb')}
    links = Links(cfg, pages)
    readme(proc, cfg.config_path, links)
    html(proc, cfg.config_path/cfg.doc_path, links)


if __name__ == '__main__':
    sys.exit(main())
