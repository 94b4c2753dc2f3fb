"""The web page at ``GET /ui``: static HTML, JavaScript and CSS from ``service/ui/``.

    GET /ui              the page (index.html)
    GET /ui/             redirects to /ui
    GET /ui/<file>       its script, style sheet and bundled examples (examples/)

No build step and nothing fetched from elsewhere: the page's content security
policy allows this origin only. In the browser the page calls the service's own
JSON APIs (/metadata, /predict, /predict_image, /generate); this app serves files
and imports no TensorFlow. A Starlette app whose routes carry their full paths:
mount it at the root (``adapter.mount_at_root``), beside BentoML's routes.
"""

from __future__ import annotations

from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIRECTORY = Path(__file__).with_name("ui")
#: What the page is made of; anything else in the folder is not served.
SERVED_SUFFIXES = frozenset({".html", ".js", ".css", ".png", ".json", ".svg"})
HEADERS = {
    # the browser revalidates (ETag) rather than keep a stale page after an upgrade
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    # this origin only: no CDN, no inline script; images drawn in the page are blob:/data:
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
        "script-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
}


class _PageFiles(StaticFiles):
    """The page's files under ``service/ui/``, with :data:`HEADERS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if Path(path).suffix not in SERVED_SUFFIXES:
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers.update(HEADERS)
        return response


async def _to_page(request: Request) -> Response:
    # relative, so that the page also works behind a proxy that adds a path prefix
    return RedirectResponse("../ui", status_code=308)


def create_app(directory: Path = UI_DIRECTORY) -> Starlette:
    """The page and its files as a Starlette app (routes with full paths: mount at /)."""

    async def page(request: Request) -> Response:
        return FileResponse(directory / "index.html", headers=HEADERS)

    return Starlette(routes=[
        Route("/ui", page, methods=["GET"]),
        Route("/ui/", _to_page, methods=["GET"]),
        Mount("/ui", app=_PageFiles(directory=directory), name="ui"),
    ])
