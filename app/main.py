"""`uvicorn app.main:app`: the application, built cheaply; settings and the model are read at start-up."""

from app.factory import create_app

app = create_app()
