"""The admin page: one static HTML page with plain JS and CSS, served by the gateway itself (no build step,
nothing fetched from elsewhere). The page holds no data and no secret; it calls the admin JSON API with the
admin key the operator types in. The page is at /admin; its assets under /admin/ui/, clear of /admin/<api>."""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from gateway.errors import APIError

router = APIRouter()

STATIC = Path(__file__).resolve().parents[1] / "static" / "admin"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# Only our own files, scripts and styles may load, and the page may only talk to this gateway.
HEADERS = {"content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                      "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
           "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache"}


@router.get("/admin", include_in_schema=False)
@router.get("/admin/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type=TYPES[".html"], headers=HEADERS)


@router.get("/admin/ui/{name}", include_in_schema=False)
def asset(name: str) -> FileResponse:
    path = STATIC / name
    # A fixed set of flat files: no path from the URL reaches the disk beyond a name found in this folder.
    if "/" in name or name.startswith(".") or path.suffix not in TYPES or not path.is_file():
        raise APIError(404, f"No admin asset named '{name}'.", code="not_found")
    return FileResponse(path, media_type=TYPES[path.suffix], headers=HEADERS)
