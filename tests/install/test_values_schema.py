"""Bad values are refused at install time by values.schema.json (or, for a combination the
schema cannot say plainly, by the template), with a message naming the value."""

from __future__ import annotations

from typing import Any

import pytest

from tests.install.chart import render, render_error

BAD: list[tuple[dict[str, Any], str]] = [
    ({"replicas": 2}, "at '/replicas': value must be 1"),
    ({"replicas": 0}, "at '/replicas': value must be 1"),
    ({"logLevel": "loud"}, "at '/logLevel': value must be one of 'debug', 'info', 'warning', 'error'"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
    ({"image": {"repository": "ghcr.io/servegraph/operator:1.0"}}, "at '/image/repository'"),
    ({"image": {"tag": "has space"}}, "at '/image/tag'"),
    ({"image": {"pullSecrets": "regcred"}}, "at '/image/pullSecrets'"),
    ({"runtimeImage": {"gpu": {"repository": ""}}}, "at '/runtimeImage/gpu/repository'"),
    ({"watchNamespaces": "team-a"}, "at '/watchNamespaces'"),
    ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
    ({"watchNamespaces": ["a", "a"]}, "at '/watchNamespaces'"),
    ({"resources": {"requests": {"memory": "lots"}}}, "at '/resources/requests/memory'"),
    ({"resources": {"limit": {"memory": "1Gi"}}}, "additional properties 'limit' not allowed"),
    ({"nodeSelector": {"disk": 1}}, "at '/nodeSelector/disk'"),
    ({"tolerations": {"key": "x"}}, "at '/tolerations'"),
    ({"metrics": {"port": 8080}}, "at '/metrics/port'"),
    ({"metrics": {"enabled": "yes"}}, "at '/metrics/enabled'"),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "at '/metrics/serviceMonitor/interval'"),
    ({"networkPolicy": {"ingressFrom": [{"podSelectr": {}}]}}, "additional properties 'podSelectr' not allowed"),
    ({"networkPolicy": {"enable": False}}, "additional properties 'enable' not allowed"),
    ({"watchNamespace": ["a"]}, "additional properties 'watchNamespace' not allowed"),
]


@pytest.mark.parametrize(("values", "expected"), BAD, ids=[str(v) for v, _ in BAD])
def test_bad_value_is_refused_with_a_message(values: dict[str, Any], expected: str) -> None:
    message = render_error(values)
    assert "values don't meet the specifications of the schema" in message
    assert expected in message, message
    assert render({}) != []  # and the chart still renders with good values
