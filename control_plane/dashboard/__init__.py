"""The operators' page at `/dashboard`: static files shipped inside the package (`static/`,
package data in pyproject.toml), served by `control_plane/api/routes/dashboard.py`.

Hand-written HTML, CSS and JavaScript, no library and nothing fetched from anywhere else at run
time: the charts are SVG drawn by charts.js. The scripts are ES modules (`app.js` imports the
rest), loaded as they are: no build step. The page calls the same `/v1` API as any client, with
the key the operator types in (or passes in the URL fragment) in the Authorization header.
"""

from __future__ import annotations

from importlib import resources

CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "batch.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "dom.js": "text/javascript; charset=utf-8",
    "overview.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


def asset(name: str) -> tuple[bytes, str] | None:
    """The file's bytes and content type; None for any name that is not one of the page's
    files (no path from the request ever reaches the file system)."""
    content_type = CONTENT_TYPES.get(name)
    if content_type is None:
        return None
    return (resources.files(__package__) / "static" / name).read_bytes(), content_type
