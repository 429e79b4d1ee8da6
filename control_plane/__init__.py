"""hotbatch's control plane (the Lambda side). Imports stay light: this runs on cold starts."""
