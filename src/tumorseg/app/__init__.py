"""The local clinician web app (FastAPI) and its static page."""
