"""The template's own Markdown (the README and its docs pages): every relative link and
``#anchor`` resolves. The baked projects' Markdown is checked per combination in test_bake.py."""

from __future__ import annotations

from conftest import TEMPLATE_DIR
from markdown_links import broken_links

# The project template is Jinja until baked; tool and build directories are not the template's.
SKIPPED = {"{{cookiecutter.project_slug}}", ".git", ".venv", "build", "node_modules", ".pytest_cache"}


def test_template_markdown_links_resolve() -> None:
    pages = [
        path
        for path in sorted(TEMPLATE_DIR.rglob("*.md"))
        if not SKIPPED.intersection(path.relative_to(TEMPLATE_DIR).parts)
    ]
    broken = [problem for page in pages for problem in broken_links(page, TEMPLATE_DIR)]

    assert "README.md" in [str(page.relative_to(TEMPLATE_DIR)) for page in pages]
    assert not broken, "links that lead nowhere:\n" + "\n".join(broken)
