"""Lambda entry point of the API: the FastAPI app through Mangum."""

from mangum import Mangum

from control_plane.api import create_app

handler = Mangum(create_app(), lifespan="off")
