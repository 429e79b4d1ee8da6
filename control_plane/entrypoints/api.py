"""Lambda entry point of the API: the FastAPI app through Mangum."""

from mangum import Mangum

from control_plane.api import create_app
from control_plane.observability import configure_lambda, lambda_entry

configure_lambda()
handler = lambda_entry(Mangum(create_app(), lifespan="off"))
