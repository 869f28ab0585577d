"""The dashboard (``/``): static files inside the package, no build step. The page reads the API
with the bearer token it is given (kept in the browser's session storage), or none on a
loopback commander without tokens; docs/dashboard.md says what it shows.

``/`` is the page; ``/ui/…`` its script, style and the vendored chart library (uPlot, MIT,
``static/vendor/``). Neither needs a token: they hold no data."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from .deps import OPEN

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
UI_PREFIX = "/ui"

router = APIRouter(tags=["dashboard"], include_in_schema=False, dependencies=[OPEN])


@router.get("/")
async def dashboard() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """What ``create_app`` mounts at :data:`UI_PREFIX`."""
    return StaticFiles(directory=STATIC_DIR)
