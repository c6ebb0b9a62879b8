"""The web UI over the built-in store (``spanmux ui``; extra ``spanmux[ui]``: Starlette, Jinja2,
uvicorn). ``spanmux.ui.app.create_app`` builds the app, ``spanmux.ui.app.serve`` runs it. Nothing is
imported here, so ``import spanmux`` never loads a web framework."""
