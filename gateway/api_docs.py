"""/docs: Swagger UI from the swagger-ui-bundle package's own files, so the page works offline (FastAPI's
default loads it from a CDN, which a gateway on a private network cannot reach)."""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

ASSETS = "/docs-assets"


def install(app: FastAPI) -> None:
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_path), name="docs-assets")
    document = app.openapi

    def openapi() -> dict:
        """FastAPI lists a 422 on every route with parameters; invalid values are answered 400 here
        (gateway/errors.py), so the document drops the 422 it would never see."""
        if app.openapi_schema is None:
            spec = document()
            for operation in (op for path in spec["paths"].values() for op in path.values()):
                operation["responses"].pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                spec.get("components", {}).get("schemas", {}).pop(unused, None)
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")
