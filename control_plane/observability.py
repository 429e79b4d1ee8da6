"""Structured JSON logs and CloudWatch EMF metrics on Lambda, through powertools.

The domain modules log with stdlib loggers (`control_plane.*`, ids in `extra`); on Lambda those
loggers get powertools' JSON formatter and the invocation's context. Metrics are buffered only
inside Lambda (the handlers flush them with `metrics.log_metrics`); elsewhere — the local stack,
tests — `count` and `seconds` cost nothing and print nothing.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.metrics import MetricUnit

NAMESPACE = "hotbatch"
logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME", "hotbatch"))
metrics = Metrics(namespace=NAMESPACE)


def configure_lambda() -> None:
    """Give every `control_plane.*` logger powertools' handler and formatter."""
    copy_config_to_registered_loggers(source_logger=logger, include={"control_plane"})


def in_lambda() -> bool:
    return "AWS_LAMBDA_FUNCTION_NAME" in os.environ


def count(name: str, value: float = 1) -> None:
    if value and in_lambda():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


def seconds(name: str, value: float) -> None:
    if in_lambda():
        metrics.add_metric(name=name, unit=MetricUnit.Seconds, value=value)


def lambda_entry(handler: Any) -> Any:
    """Decorate a Lambda handler: invocation context in the logs, metrics flushed at the end."""
    return metrics.log_metrics(logger.inject_lambda_context(log_event=False)(handler))
