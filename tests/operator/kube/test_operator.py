"""A tiny kopf operator embedded against the emulator, writing through the ``kubernetes``
client: what the real operator's tests will do, end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import kopf
import kubernetes.client
import pytest

from .conftest import FINALIZER, OperatorRunner
from .emulator import MODELDEPLOYMENTS, ServegraphEmulator, eventually

NS = 'ns1'
MDEPS = f'/apis/servegraph.io/v1alpha1/namespaces/{NS}/modeldeployments'
CMS = f'/api/v1/namespaces/{NS}/configmaps'
JSON = {'Content-Type': 'application/json', 'Accept': 'application/json'}


def call_api(client: kubernetes.client.ApiClient, method: str, path: str, body: Any = None) -> Any:
    """One synchronous call with a dict body; run it in a thread (the emulator is in this loop)."""
    return client.call_api(path, method, header_params=dict(JSON), body=body,
                           response_types_map={200: 'object', 201: 'object'}, _return_http_data_only=True)


def tiny_operator(client: kubernetes.client.ApiClient, resumed: list[str]) -> kopf.OperatorRegistry:
    """On create: a ConfigMap owned by the ModelDeployment (adopted if it exists), then status.
    On resume: recreate the ConfigMap only if it is missing (a read, then nothing)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create('servegraph.io', 'v1alpha1', 'modeldeployments', registry=registry)
    async def create_config(name: str, namespace: str, uid: str, spec: Any, patch: kopf.Patch, **_: Any) -> None:
        config = {
            'apiVersion': 'v1', 'kind': 'ConfigMap',
            'metadata': {'name': f'{name}-config', 'namespace': namespace, 'labels': {'servegraph.io/mdep': name},
                         'ownerReferences': [{'apiVersion': 'servegraph.io/v1alpha1', 'kind': 'ModelDeployment',
                                              'name': name, 'uid': uid, 'controller': True,
                                              'blockOwnerDeletion': True}]},
            'data': {'replicas': str(spec.get('replicas', 1))},
        }

        def post() -> None:
            try:
                call_api(client, 'POST', f'/api/v1/namespaces/{namespace}/configmaps', config)
            except kubernetes.client.ApiException as exc:
                if exc.status != 409:  # AlreadyExists: adopt it
                    raise

        await asyncio.to_thread(post)
        patch.status['configMap'] = f'{name}-config'

    @kopf.on.delete('servegraph.io', 'v1alpha1', 'modeldeployments', registry=registry)
    def deleted(name: str, **_: Any) -> None:  # a deletion handler: kopf keeps a finalizer
        pass

    @kopf.on.resume('servegraph.io', 'v1alpha1', 'modeldeployments', registry=registry)
    async def resume(name: str, namespace: str, **kwargs: Any) -> None:
        try:
            await asyncio.to_thread(call_api, client, 'GET', f'/api/v1/namespaces/{namespace}/configmaps/{name}-config')
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise
            await create_config(name=name, namespace=namespace, **kwargs)
        resumed.append(name)

    return registry


def mdep(name: str) -> dict[str, Any]:
    return {'apiVersion': 'servegraph.io/v1alpha1', 'kind': 'ModelDeployment',
            'metadata': {'name': name, 'namespace': NS}, 'spec': {'replicas': 2}}


async def test_tiny_operator_end_to_end(
    emulator: ServegraphEmulator, api_client: kubernetes.client.ApiClient, run_operator: OperatorRunner,
) -> None:
    resumed: list[str] = []
    async with run_operator(tiny_operator(api_client, resumed)):
        await asyncio.to_thread(call_api, api_client, 'POST', MDEPS, mdep('m1'))
        config = await eventually(lambda: emulator.get_object('v1/configmaps', NS, 'm1-config'), what='the ConfigMap')
        owner = emulator.get_object(MODELDEPLOYMENTS, NS, 'm1')
        assert owner is not None
        assert config['metadata']['ownerReferences'][0]['uid'] == owner['metadata']['uid']
        assert config['data'] == {'replicas': '2'}
        await eventually(lambda: (emulator.get_object(MODELDEPLOYMENTS, NS, 'm1') or {}).get('status', {}).get('configMap'),
                         what='the status')
        owner = emulator.get_object(MODELDEPLOYMENTS, NS, 'm1')
        assert owner is not None and owner['metadata']['finalizers'] == [FINALIZER]
        assert owner['metadata']['generation'] == 1  # kopf wrote only metadata and status

        # A 410 Gone mid-stream: kopf re-lists, sees m1 handled already, and keeps working.
        lists = len([c for c in emulator.calls if c.verb == 'list' and c.resource == 'modeldeployments'])
        assert emulator.expire_watches(resource=MODELDEPLOYMENTS) == 1
        await eventually(lambda: emulator.watching(MODELDEPLOYMENTS) and lists < len(
            [c for c in emulator.calls if c.verb == 'list' and c.resource == 'modeldeployments']), what='a re-list')
        await asyncio.to_thread(call_api, api_client, 'POST', MDEPS, mdep('m2'))
        await eventually(lambda: emulator.get_object('v1/configmaps', NS, 'm2-config'), what='the 2nd ConfigMap')
        await eventually(lambda: (emulator.get_object(MODELDEPLOYMENTS, NS, 'm2') or {}).get('status'), what='status 2')
        assert emulator.writes('create', 'configmaps') == [('create', '', 'configmaps', NS, 'm1-config'),
                                                           ('create', '', 'configmaps', NS, 'm2-config')]

        # Deleting the owner: kopf releases its finalizer, the GC takes the ConfigMap.
        await asyncio.to_thread(call_api, api_client, 'DELETE', f'{MDEPS}/m1')
        await eventually(lambda: emulator.get_object('v1/configmaps', NS, 'm1-config') is None, what='GC')
        assert emulator.get_object(MODELDEPLOYMENTS, NS, 'm1') is None
        assert emulator.get_object('v1/configmaps', NS, 'm2-config') is not None

    # A restart over handled objects: the resume handler finds its ConfigMap and writes nothing.
    assert resumed == []
    writes_before = len(emulator.writes())
    async with run_operator(tiny_operator(api_client, resumed)):
        await eventually(lambda: resumed == ['m2'], what='the resume handler')
    # The operator has stopped (it lets its workers finish): nothing was written on resume.
    assert emulator.writes()[writes_before:] == []
    assert [(c.verb, c.resource, c.name) for c in emulator.calls if c.verb == 'get'] == [('get', 'configmaps', 'm2-config')]
    assert len(emulator.writes('create', 'configmaps')) == 2
    assert emulator.writes('create', 'modeldeployments') == [('create', 'servegraph.io', 'modeldeployments', NS, 'm1'),
                                                             ('create', 'servegraph.io', 'modeldeployments', NS, 'm2')]
    assert ('servegraph.io', 'modeldeployments/status', 'patch') in emulator.rbac_rules()


@pytest.mark.parametrize('initial_streaming', [False, True], ids=['list-then-watch', 'initial-events'])
async def test_namespaced_operator_follows_an_owned_kind_through_faults(
    emulator: ServegraphEmulator, api_client: kubernetes.client.ApiClient, run_operator: OperatorRunner,
    initial_streaming: bool,
) -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.create('servegraph.io', 'v1alpha1', 'modeldeployments', registry=registry)
    async def create_deployment(name: str, namespace: str, uid: str, **_: Any) -> None:
        deployment = {
            'apiVersion': 'apps/v1', 'kind': 'Deployment',
            'metadata': {'name': f'{name}-predictor', 'labels': {'servegraph.io/mdep': name},
                         'ownerReferences': [{'apiVersion': 'servegraph.io/v1alpha1', 'kind': 'ModelDeployment',
                                              'name': name, 'uid': uid, 'controller': True}]},
            'spec': {'replicas': 2},
        }
        await asyncio.to_thread(call_api, api_client, 'POST', f'/apis/apps/v1/namespaces/{namespace}/deployments', deployment)

    @kopf.on.field('apps', 'v1', 'deployments', field='status.readyReplicas',
                   labels={'servegraph.io/mdep': kopf.PRESENT}, registry=registry)
    async def follow_readiness(new: Any, labels: Mapping[str, str], namespace: str, **_: Any) -> None:
        mdep_status = f'/apis/servegraph.io/v1alpha1/namespaces/{namespace}/modeldeployments/{labels["servegraph.io/mdep"]}/status'
        await asyncio.to_thread(lambda: api_client.call_api(
            mdep_status, 'PATCH', header_params={'Content-Type': 'application/merge-patch+json', 'Accept': 'application/json'},
            body={'status': {'readyReplicas': new}}, response_types_map={200: 'object'}, _return_http_data_only=True))

    def settings_fn(settings: kopf.OperatorSettings) -> None:
        settings.watching.initial_streaming = initial_streaming

    create_fault = emulator.inject('create', 'deployments', 500)  # the handler fails once, kopf retries it
    patch_fault = emulator.inject('patch', 'modeldeployments', 429, retry_after=0)  # kopf's own write is throttled
    async with run_operator(registry, settings_fn, namespaces=[NS],
                            watched=[MODELDEPLOYMENTS, 'apps/v1/deployments']):
        await asyncio.to_thread(call_api, api_client, 'POST', MDEPS, mdep('m'))
        await asyncio.to_thread(call_api, api_client, 'POST', '/apis/servegraph.io/v1alpha1/namespaces/other/modeldeployments',
                                dict(mdep('x'), metadata={'name': 'x', 'namespace': 'other'}))
        await eventually(lambda: emulator.get_object('apps/v1/deployments', NS, 'm-predictor'), what='the Deployment')
        # Play the Deployment controller: readiness goes to the status subresource.
        emulator.patch_object('apps/v1/deployments', NS, 'm-predictor', {'status': {'readyReplicas': 2}}, subresource='status')
        await eventually(lambda: (emulator.get_object(MODELDEPLOYMENTS, NS, 'm') or {}).get('status', {}).get('readyReplicas') == 2,
                         what='the readiness in the ModelDeployment status')

    assert create_fault.used == 1 and patch_fault.used == 1
    assert emulator.writes('create', 'deployments') == [('create', 'apps', 'deployments', NS, 'm-predictor')] * 2
    assert emulator.writes('create', 'deployments', ok=True) == [('create', 'apps', 'deployments', NS, 'm-predictor')]
    assert emulator.get_object('apps/v1/deployments', 'other', 'x-predictor') is None  # not its namespace
    assert {c.namespace for c in emulator.calls if c.verb == 'watch'} == {NS}
    listed = {c.resource for c in emulator.calls if c.verb == 'list'}
    assert listed == (set() if initial_streaming else {'modeldeployments', 'deployments'})


async def test_kopf_pitfall_a_failed_status_patch_is_never_retried(
    emulator: ServegraphEmulator, run_operator: OperatorRunner, caplog: pytest.LogCaptureFixture,
) -> None:
    """kopf writes a handler's outcome in two PATCHes: the main resource (its progress and
    diffbase annotations) then ``/status``. A non-retriable error on the second (409, 422,
    403; 5xx and 429 are retried) leaves the object recorded as handled with its status lost:
    kopf throttles, and no later event re-runs the handler. Critical status is best written by
    the operator itself (or re-derived by a timer/resume handler)."""
    registry = kopf.OperatorRegistry()

    updates: list[str] = []

    @kopf.on.create('servegraph.io', 'v1alpha1', 'modeldeployments', registry=registry)
    def create(patch: kopf.Patch, **_: Any) -> None:
        patch.status['phase'] = 'Ready'

    @kopf.on.update('servegraph.io', 'v1alpha1', 'modeldeployments', registry=registry)
    def update(name: str, **_: Any) -> None:
        updates.append(name)

    fault = emulator.inject('patch', 'modeldeployments', 409, subresource='status')
    async with run_operator(registry):
        emulator.create_object(MODELDEPLOYMENTS, mdep('m'), namespace=NS)
        await eventually(lambda: fault.used and 'Throttling is over' in caplog.text, what='the throttled 409')
        body = emulator.get_object(MODELDEPLOYMENTS, NS, 'm')
        assert body is not None and 'status' not in body
        assert 'servegraph.io/last-handled-configuration' in body['metadata']['annotations']  # "handled"
        # A later change is an update, not a retry of the creation: the status stays lost.
        emulator.patch_object(MODELDEPLOYMENTS, NS, 'm', {'metadata': {'labels': {'touched': 'yes'}}})
        await eventually(lambda: updates == ['m'], what='the update handler')
    body = emulator.get_object(MODELDEPLOYMENTS, NS, 'm')
    assert body is not None and 'phase' not in body.get('status', {})
    assert [(c.subresource, c.status) for c in emulator.calls if c.verb == 'patch'][:2] == [(None, 200), ('status', 409)]
