"""``GET /playground``: a browser page over the ``/v1`` API (``/`` redirects to it).

Plain HTML, CSS and JavaScript shipped in the package (``server/playground/``): no build step, no CDN.
The page holds the tenant key the person pastes in ``sessionStorage`` only and sends it as a bearer header,
never in a URL. A strict Content-Security-Policy allows only this origin's scripts, styles and requests, and
no form submission (a form can never leak the key into a URL even if the script fails to load).
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from pplug.server.errors import ApiError

router = APIRouter(include_in_schema=False)
STATIC = files("pplug.server") / "playground"
JS = "text/javascript; charset=utf-8"
FILES = {"index.html": "text/html; charset=utf-8", "app.js": JS, "api.js": JS, "style.css": "text/css; charset=utf-8",
         "favicon.svg": "image/svg+xml"}
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _file(name: str) -> Response:
    if name not in FILES:
        raise ApiError(404, f"no playground file '{name}'")
    return Response((STATIC / name).read_bytes(), media_type=FILES[name], headers=HEADERS)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/playground", status_code=307)


@router.get("/playground")
async def page() -> Response:
    """The playground page (no key needed to load it; every API call it makes needs one)."""
    return _file("index.html")


@router.get("/playground/{name}")
async def asset(name: str) -> Response:
    return _file(name)
