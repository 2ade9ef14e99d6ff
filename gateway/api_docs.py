"""/docs: Swagger UI from the fastapi-offline package's own files, so the page works offline (FastAPI's
default loads it from a CDN, which a gateway on a private network cannot reach). It is Swagger UI 5, which
renders the OpenAPI 3.1 document FastAPI writes (swagger-ui-bundle's 3.20 could not)."""
from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"
SWAGGER_UI = Path(fastapi_offline.__file__).parent / "static"


def install(app: FastAPI, bodies: tuple = (), documented: list = ()) -> None:
    """`bodies`: request models that routes read themselves (documented by reference); their schemas join the
    document's components. `documented`: FastAPI routes of paths the app serves with plain Starlette routes, which
    FastAPI would leave out of the document."""
    app.mount(ASSETS, StaticFiles(directory=SWAGGER_UI), name="docs-assets")

    def document() -> dict:
        return get_openapi(title=app.title, version=app.version, openapi_version=app.openapi_version,
                           routes=[*documented, *app.routes])

    def openapi() -> dict:
        """FastAPI lists a 422 on every route with parameters; invalid values are answered 400 here
        (gateway/errors.py), so the document drops the 422 it would never see."""
        if app.openapi_schema is None:
            spec = app.openapi_schema = document()
            for operation in (op for path in spec["paths"].values() for op in path.values()):
                operation["responses"].pop("422", None)
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            for kind in bodies:
                schema = kind.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}), **{kind.__name__: schema})
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title}: API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon.png")
