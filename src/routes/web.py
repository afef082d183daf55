"""The dashboard: its page at `/`, its static files (CSS, JavaScript modules) at /static/ and
the icon at /favicon.ico."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from src.routes.validation import JsonRoute

router = APIRouter(route_class=JsonRoute, include_in_schema=False)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
STATIC_DIR = WEB_DIR / "static"
#: A static file is named by one plain segment; the name is checked, then looked up.
STATIC_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
MEDIA_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
#: Revalidated on each load (FileResponse sends ETag and Last-Modified), so an upgrade shows.
NO_CACHE = {"Cache-Control": "no-cache"}
#: The icon is kept a day: browsers ask for it on every page otherwise (a log line each).
ICON_CACHE = {"Cache-Control": "public, max-age=86400"}
ICON_URL = "/favicon.ico"


@router.get("/")
async def index() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get(ICON_URL)
async def favicon() -> FileResponse:
    """The icon of the dashboard and the API docs (SVG, which browsers take at this path)."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml", headers=ICON_CACHE)


@router.get("/static/{name}")
async def static(name: str) -> FileResponse:
    match = STATIC_NAME.match(name)
    path = STATIC_DIR / name
    if match is None or not path.is_file():
        raise HTTPException(status_code=404, detail="not found")
    return FileResponse(path, media_type=MEDIA_TYPES[match.group(1)], headers=NO_CACHE)
