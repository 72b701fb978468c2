"""The one logger and metrics object of the package. Never instantiate others.

Service name and namespace come from POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE
(set by template.yaml); the defaults make local runs and tests work without them.
"""

from __future__ import annotations

import os

from aws_lambda_powertools import Logger, Metrics

SERVICE = os.environ.get("POWERTOOLS_SERVICE_NAME", "cckm-oci-refresh")
NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "CckmOciRefresh")

logger = Logger(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)
