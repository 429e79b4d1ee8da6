"""Errors of the local RunPod endpoint, each mapped to the status RunPod answers with."""

from __future__ import annotations


class LocalEndpointError(Exception):
    status = 400

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class JobNotFound(LocalEndpointError):
    status = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")


class EndpointNotFound(LocalEndpointError):
    status = 404

    def __init__(self, endpoint_id: str) -> None:
        super().__init__(f"endpoint {endpoint_id} not found")


class Unauthorized(LocalEndpointError):
    status = 401

    def __init__(self) -> None:
        super().__init__("Unauthorized")


class PayloadTooLarge(LocalEndpointError):
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"payload exceeds the {limit // (1024 * 1024)} MB limit")
