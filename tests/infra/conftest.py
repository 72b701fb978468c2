"""The SAM template, as written and as the SAM translator turns it into CloudFormation."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from devkit.template import load_template


class _NoManagedPolicies:
    """The translator's managed-policy loader, offline: our functions name none."""

    def load(self) -> dict[str, str]:
        return {}


@pytest.fixture(scope="session")
def sam_template() -> dict[str, Any]:
    """template.yaml parsed, short tags (!Ref, !Sub...) as their long forms."""
    return load_template()


@pytest.fixture(scope="session")
def cfn_template(sam_template: dict[str, Any]) -> dict[str, Any]:
    """template.yaml transformed to plain CloudFormation by the SAM translator."""
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(sam_template)
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        # The translator wants deployable artifacts; what they hold does not matter here.
        if "CodeUri" in properties:
            properties["CodeUri"] = "s3://artifacts/function.zip"
        if "ContentUri" in properties:
            properties["ContentUri"] = "s3://artifacts/layer.zip"
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    transformed: dict[str, Any] = transform(template, {}, _NoManagedPolicies())
    return transformed


def resources_of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """The resources of one CloudFormation type, by logical id."""
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == kind
    }


def event_source_mapping(template: dict[str, Any], source: str) -> dict[str, Any]:
    """Properties of the one event source mapping reading ``source`` (a logical id)."""
    [mapping] = [
        resource["Properties"]
        for resource in resources_of_type(template, "AWS::Lambda::EventSourceMapping").values()
        if resource["Properties"]["EventSourceArn"]["Fn::GetAtt"][0] == source
    ]
    return mapping
