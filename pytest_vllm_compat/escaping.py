"""The one way a value reaches the site's HTML (site.py, site_measures.py, site_logs.py)."""

from __future__ import annotations

import html


def esc(value: object) -> str:
    """``html.escape(str(value), quote=True)``; None -> ''."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)
