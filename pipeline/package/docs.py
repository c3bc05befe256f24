"""Documents of the package, rendered from the run with the jinja2 templates in
include/templates/ (deployment guide, runbook, deployment checklist, Dockerfile)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["TEMPLATES_DIR", "render"]

TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "include" / "templates"


def render(template: str, context: dict[str, Any], templates_dir: Path | None = None) -> str:
    """Render `template` strictly: a name missing from `context` is an error, not a blank."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir or TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # Markdown and Dockerfiles, not HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    text = env.get_template(template).render(**context)
    return text.rstrip("\n") + "\n"
