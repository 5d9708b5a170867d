#!/usr/bin/env python3
"""Check the internal links of the built docs; build nothing.

Run after `python tools/build_docs.py`. Checks every `href`/`src` in `_docs/*.html` (the target file exists; an
`#anchor` is an id on the target page) and every relative link in README.md (the file exists beside README.md;
an `#anchor` of README.md itself is one of its headings, as GitHub names them). Links with a scheme (`https:`,
`data:`, `mailto:`) are not checked. Exits 1 and lists the broken links if there are any.

    python tools/build_docs.py && python tools/check_links.py
"""
import re, sys
from functools import cache
from pathlib import Path
from urllib.parse import unquote, urlsplit
from bs4 import BeautifulSoup
from nbdev.config import get_config


def is_internal(url: str) -> bool:
    return not urlsplit(url).scheme and not url.startswith('//')


@cache
def html_ids(page: Path) -> frozenset:
    soup = BeautifulSoup(page.read_text(), 'html.parser')
    return frozenset(t['id'] for t in soup.find_all(id=True)) | frozenset(t['name'] for t in soup.find_all('a', attrs={'name': True}))


def check(source: Path, url: str, ids_of) -> str | None:
    "Why `url`, found in `source`, is broken; None when it resolves."
    parts = urlsplit(url)
    target = (source.parent/unquote(parts.path)).resolve() if parts.path else source
    if not target.exists(): return f'{url}: {target} does not exist'
    if parts.fragment and ids_of(target) is not None and unquote(parts.fragment) not in ids_of(target):
        return f'{url}: no #{parts.fragment} in {target.name}'


def html_links(page: Path):
    soup = BeautifulSoup(page.read_text(), 'html.parser')
    for tag in soup.find_all(href=True): yield tag['href']
    for tag in soup.find_all(src=True): yield tag['src']


def check_docs(docs: Path) -> list[str]:
    def ids_of(target): return html_ids(target) if target.suffix == '.html' else None
    pages = sorted(docs.glob('*.html'))
    if not pages: return [f'{docs}: no pages (run tools/build_docs.py first)']
    return [f'{page.name}: {why}' for page in pages for url in html_links(page) if is_internal(url)
            if (why := check(page, url, ids_of))]


def github_slug(heading: str) -> str:
    "The anchor GitHub gives a Markdown heading."
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def without_code(text: str) -> str:
    "Markdown with its fenced code blocks removed: code holds neither links nor headings."
    return re.sub(r'^```.*?^```', '', text, flags=re.S | re.M)


def readme_links(text: str):  # text: Markdown without code blocks
    yield from re.findall(r'\]\(([^)\s]+)(?:\s+"[^"]*")?\)', text)
    yield from re.findall(r'(?:href|src)="([^"]+)"', text)


def check_readme(readme: Path) -> list[str]:
    text = without_code(readme.read_text())
    slugs = frozenset(github_slug(h) for h in re.findall(r'^#+\s+(.*)$', text, re.M))
    def ids_of(target): return slugs if target == readme else None  # GitHub shows no anchors inside notebooks
    return [f'{readme.name}: {why}' for url in readme_links(text) if is_internal(url) if (why := check(readme, url, ids_of))]


def main():
    cfg = get_config()
    broken = check_docs(cfg.config_path/cfg.doc_path) + check_readme(cfg.config_path/'README.md')
    print('\n'.join(broken) or 'all internal links resolve')
    return 1 if broken else 0


if __name__ == '__main__':
    sys.exit(main())
