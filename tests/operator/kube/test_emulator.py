"""The emulated API server itself: the apiserver behaviour the operator and kopf rely on."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import kubernetes.client
import kubernetes.config

from .emulator import MODELDEPLOYMENTS, ServegraphEmulator, eventually

NS = 'ns1'
MDEPS = f'/apis/servegraph.io/v1alpha1/namespaces/{NS}/modeldeployments'
CMS = f'/api/v1/namespaces/{NS}/configmaps'
DEPLOYS = f'/apis/apps/v1/namespaces/{NS}/deployments'
MERGE = {'Content-Type': 'application/merge-patch+json'}
JSONPATCH = {'Content-Type': 'application/json-patch+json'}


async def call(emulator: ServegraphEmulator, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None, **params: str) -> tuple[int, Any]:
    async with emulator.request(method, path, json=body, headers=headers, params=params) as resp:
        return resp.status, await resp.json(content_type=None)


def mdep(name: str, **labels: str) -> dict[str, Any]:
    return {'apiVersion': 'servegraph.io/v1alpha1', 'kind': 'ModelDeployment',
            'metadata': {'name': name, 'labels': labels}, 'spec': {'replicas': 1},
            'status': {'phase': 'Forged'}}


async def test_server_sets_metadata_and_generation(emulator: ServegraphEmulator) -> None:
    status, created = await call(emulator, 'POST', MDEPS, mdep('a'))
    assert status == 201
    meta = created['metadata']
    assert meta['namespace'] == NS and meta['uid'] and meta['generation'] == 1
    assert meta['creationTimestamp'].endswith('Z')
    assert 'status' not in created  # status is a subresource: ignored on create
    rv1 = int(meta['resourceVersion'])

    _, cm = await call(emulator, 'POST', CMS, {'metadata': {'name': 'c'}, 'data': {'k': 'v'}})
    rv2 = int(cm['metadata']['resourceVersion'])
    assert rv2 > rv1  # one counter for the whole cluster
    assert cm['kind'] == 'ConfigMap' and cm['apiVersion'] == 'v1'

    _, labelled = await call(emulator, 'PATCH', f'{MDEPS}/a', {'metadata': {'labels': {'x': 'y'}}}, MERGE)
    assert labelled['metadata']['generation'] == 1  # metadata only
    assert int(labelled['metadata']['resourceVersion']) > rv2
    _, respecced = await call(emulator, 'PATCH', f'{MDEPS}/a', {'spec': {'replicas': 3}}, MERGE)
    assert respecced['metadata']['generation'] == 2
    _, same = await call(emulator, 'PATCH', f'{MDEPS}/a', {'spec': {'replicas': 3}}, MERGE)
    assert same['metadata']['resourceVersion'] == respecced['metadata']['resourceVersion']  # no-op
    assert same['metadata']['uid'] == meta['uid']

    status, listing = await call(emulator, 'GET', MDEPS)
    assert status == 200
    assert listing['kind'] == 'ModelDeploymentList'
    assert listing['apiVersion'] == 'servegraph.io/v1alpha1'
    assert listing['metadata']['resourceVersion'] == str(emulator.resource_version)
    assert [item['metadata']['name'] for item in listing['items']] == ['a']
    _, deploys = await call(emulator, 'GET', '/apis/apps/v1/deployments')
    assert deploys['kind'] == 'DeploymentList' and deploys['items'] == []


async def test_errors_conflict_exists_missing_invalid(emulator: ServegraphEmulator) -> None:
    _, created = await call(emulator, 'POST', MDEPS, mdep('a'))
    old_rv = created['metadata']['resourceVersion']
    await call(emulator, 'PATCH', f'{MDEPS}/a', {'spec': {'replicas': 2}}, MERGE)

    status, body = await call(emulator, 'PATCH', f'{MDEPS}/a',
                              {'metadata': {'resourceVersion': old_rv}, 'spec': {'replicas': 5}}, MERGE)
    assert (status, body['reason'], body['kind']) == (409, 'Conflict', 'Status')
    status, body = await call(emulator, 'POST', MDEPS, mdep('a'))
    assert (status, body['reason']) == (409, 'AlreadyExists')
    for method in ('GET', 'PATCH', 'DELETE'):
        status, body = await call(emulator, method, f'{MDEPS}/missing', {} if method == 'PATCH' else None, MERGE)
        assert (status, body['reason']) == (404, 'NotFound'), method

    test_stale = [{'op': 'test', 'path': '/metadata/resourceVersion', 'value': old_rv},
                  {'op': 'add', 'path': '/metadata/finalizers', 'value': ['f']}]
    status, body = await call(emulator, 'PATCH', f'{MDEPS}/a', test_stale, JSONPATCH)
    assert status == 422
    current = emulator.get_object(MDEPS_RES, NS, 'a')
    assert current is not None and 'finalizers' not in current['metadata']
    test_fresh = [dict(test_stale[0], value=current['metadata']['resourceVersion']), test_stale[1]]
    status, body = await call(emulator, 'PATCH', f'{MDEPS}/a', test_fresh, JSONPATCH)
    assert status == 200 and body['metadata']['finalizers'] == ['f']


MDEPS_RES = MODELDEPLOYMENTS


async def test_label_and_field_selectors_filter(emulator: ServegraphEmulator) -> None:
    for name, labels in [('a', {'app': 'x', 'tier': 'web'}), ('b', {'app': 'x', 'tier': 'db'}), ('c', {'app': 'y'})]:
        await call(emulator, 'POST', CMS, {'metadata': {'name': name, 'labels': labels}})

    async def names(**params: str) -> list[str]:
        _, listing = await call(emulator, 'GET', CMS, **params)
        return [item['metadata']['name'] for item in listing['items']]

    assert await names(labelSelector='app=x') == ['a', 'b']
    assert await names(labelSelector='app=x,tier=db') == ['b']
    assert await names(labelSelector='app==x,tier!=db') == ['a']
    assert await names(labelSelector='tier in (web,db),app notin (y)') == ['a', 'b']
    assert await names(labelSelector='!tier') == ['c']
    assert await names(fieldSelector='metadata.name=c') == ['c']
    assert await names() == ['a', 'b', 'c']
    status, _ = await call(emulator, 'GET', CMS, labelSelector='app=(')
    assert status == 400


async def test_status_subresource_is_isolated(emulator: ServegraphEmulator) -> None:
    await call(emulator, 'POST', MDEPS, mdep('a'))
    _, body = await call(emulator, 'PATCH', f'{MDEPS}/a',
                         {'spec': {'replicas': 2}, 'status': {'phase': 'Ignored'}}, MERGE)
    assert body['spec'] == {'replicas': 2} and 'status' not in body
    _, body = await call(emulator, 'PATCH', f'{MDEPS}/a/status',
                         {'spec': {'replicas': 9}, 'status': {'phase': 'Ready'}, 'metadata': {'labels': {'l': 'v'}}}, MERGE)
    assert body['status'] == {'phase': 'Ready'} and body['spec'] == {'replicas': 2}
    assert 'labels' not in body['metadata'] and body['metadata']['generation'] == 2
    status, body = await call(emulator, 'GET', f'{MDEPS}/a/status')
    assert status == 200 and body['status'] == {'phase': 'Ready'}
    _, body = await call(emulator, 'PATCH', f'{MDEPS}/a', [{'op': 'replace', 'path': '/status/phase', 'value': 'X'}],
                         JSONPATCH)
    assert body['status'] == {'phase': 'Ready'}
    status, _ = await call(emulator, 'PATCH', f'{CMS}/none/status', {}, MERGE)
    assert status == 404  # configmaps have no status subresource


async def test_finalizers_delay_deletion(emulator: ServegraphEmulator) -> None:
    body = mdep('a')
    body['metadata']['finalizers'] = ['servegraph.io/finalizer']
    await call(emulator, 'POST', MDEPS, body)
    status, deleting = await call(emulator, 'DELETE', f'{MDEPS}/a')
    assert status == 200 and deleting['metadata']['deletionTimestamp']
    assert deleting['metadata']['generation'] == 2
    status, body = await call(emulator, 'PATCH', f'{MDEPS}/a', {'metadata': {'finalizers': ['new', 'servegraph.io/finalizer']}}, MERGE)
    assert status == 422  # no new finalizers on a deleting object
    status, _ = await call(emulator, 'PATCH', f'{MDEPS}/a', {'metadata': {'finalizers': None}}, MERGE)
    assert status == 200
    status, _ = await call(emulator, 'GET', f'{MDEPS}/a')
    assert status == 404


async def read_events(resp: Any, count: int, timeout: float = 3) -> list[dict[str, Any]]:
    events = []
    async with asyncio.timeout(timeout):
        while len(events) < count:
            line = await resp.content.readline()
            assert line, f'the stream ended after {events!r}'
            events.append(json.loads(line))
    return events


async def test_watch_honours_resource_version_and_loses_nothing(emulator: ServegraphEmulator) -> None:
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'before'}})
    _, listing = await call(emulator, 'GET', CMS)
    since = listing['metadata']['resourceVersion']
    # Changes between the list and the watch must be streamed, not lost.
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'between'}})
    await call(emulator, 'PATCH', f'{CMS}/before', {'data': {'k': 'v'}}, MERGE)
    async with emulator.get(CMS, params={'watch': 'true', 'resourceVersion': since}) as resp:
        events = await read_events(resp, 2)
        assert [(e['type'], e['object']['metadata']['name']) for e in events] == [('ADDED', 'between'), ('MODIFIED', 'before')]
        await call(emulator, 'DELETE', f'{CMS}/between')
        await call(emulator, 'POST', '/api/v1/namespaces/other/configmaps', {'metadata': {'name': 'elsewhere'}})
        await call(emulator, 'POST', CMS, {'metadata': {'name': 'after'}})
        events = await read_events(resp, 2)
        assert [(e['type'], e['object']['metadata']['name']) for e in events] == [('DELETED', 'between'), ('ADDED', 'after')]
        rvs = [int(e['object']['metadata']['resourceVersion']) for e in events]
        assert rvs == sorted(rvs) and rvs[0] > int(since)

    # Without a resourceVersion: the current objects first, as ADDED.
    async with emulator.get('/api/v1/configmaps', params={'watch': 'true', 'labelSelector': ''}) as resp:
        events = await read_events(resp, 3)
        assert sorted(e['object']['metadata']['name'] for e in events) == ['after', 'before', 'elsewhere']
        assert {e['type'] for e in events} == {'ADDED'}


async def test_expired_watches_get_410_and_end(emulator: ServegraphEmulator) -> None:
    async with emulator.get(CMS, params={'watch': 'true'}) as resp:
        await eventually(lambda: emulator.watching('v1/configmaps'), what='the watch')
        assert emulator.expire_watches() == 1
        [event] = await read_events(resp, 1)
        assert event['type'] == 'ERROR' and event['object']['code'] == 410
        assert await resp.content.readline() == b''  # the stream is over
    emulator.compact()
    async with emulator.get(CMS, params={'watch': 'true', 'resourceVersion': '0'}) as resp:
        pass  # "0" means "any": never too old
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'x'}})  # rv 1
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'x2'}})
    emulator.compact()  # rv 1 is too old now
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'y'}})
    async with emulator.get(CMS, params={'watch': 'true', 'resourceVersion': '1'}) as resp:
        [event] = await read_events(resp, 1)
        assert event['object']['code'] == 410


async def test_garbage_collection_by_owner_references(emulator: ServegraphEmulator) -> None:
    _, owner = await call(emulator, 'POST', MDEPS, mdep('owner'))
    _, other = await call(emulator, 'POST', MDEPS, mdep('other'))

    def ref(obj: dict[str, Any]) -> dict[str, Any]:
        return {'apiVersion': obj['apiVersion'], 'kind': obj['kind'], 'name': obj['metadata']['name'],
                'uid': obj['metadata']['uid'], 'controller': True, 'blockOwnerDeletion': True}

    _, deploy = await call(emulator, 'POST', DEPLOYS, {'metadata': {'name': 'd', 'ownerReferences': [ref(owner)]}})
    _, pod = await call(emulator, 'POST', f'/api/v1/namespaces/{NS}/pods',
                        {'metadata': {'name': 'p', 'ownerReferences': [ref(deploy)]}})
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'shared', 'ownerReferences': [ref(owner), ref(other)]}})
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'unowned'}})

    async with emulator.get('/api/v1/pods', params={'watch': 'true', 'resourceVersion': pod['metadata']['resourceVersion']}) as resp:
        status, _ = await call(emulator, 'DELETE', f'{MDEPS}/owner')
        assert status == 200
        [event] = await read_events(resp, 1)
        assert (event['type'], event['object']['metadata']['name']) == ('DELETED', 'p')
    assert emulator.get_object('apps/v1/deployments', NS, 'd') is None
    assert emulator.get_object('v1/pods', NS, 'p') is None
    assert emulator.get_object('v1/configmaps', NS, 'shared') is not None  # another owner is alive
    await call(emulator, 'DELETE', f'{MDEPS}/other')
    assert emulator.get_object('v1/configmaps', NS, 'shared') is None
    assert emulator.get_object('v1/configmaps', NS, 'unowned') is not None
    # A dependent created after its owner is gone is collected at once.
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'late', 'ownerReferences': [ref(owner)]}})
    assert emulator.get_object('v1/configmaps', NS, 'late') is None


async def test_recording_and_fault_injection(emulator: ServegraphEmulator) -> None:
    fault = emulator.inject('create', 'configmaps', 429, retry_after=2)
    async with emulator.post(CMS, json={'metadata': {'name': 'a'}}) as resp:
        assert resp.status == 429 and resp.headers['Retry-After'] == '2'
        assert (await resp.json())['reason'] == 'TooManyRequests'
    assert fault.used == 1 and emulator.get_object('v1/configmaps', NS, 'a') is None
    assert (await call(emulator, 'POST', CMS, {'metadata': {'name': 'a'}}))[0] == 201

    emulator.inject('patch', 'apps/deployments', 500, times=2)
    await call(emulator, 'POST', DEPLOYS, {'metadata': {'name': 'd'}})
    statuses = [(await call(emulator, 'PATCH', f'{DEPLOYS}/d', {'spec': {'replicas': n}}, MERGE))[0] for n in (1, 2, 3)]
    assert statuses == [500, 500, 200]
    emulator.inject('patch', 'configmaps', 409)
    assert (await call(emulator, 'PATCH', f'{CMS}/a', {'data': {}}, MERGE))[0] == 409
    await call(emulator, 'GET', CMS)

    assert emulator.writes('create') == [('create', '', 'configmaps', NS, 'a')] * 2 + [('create', 'apps', 'deployments', NS, 'd')]
    assert [c.body for c in emulator.calls if c.verb == 'patch' and c.status == 200] == [{'spec': {'replicas': 3}}]
    assert {c.content_type for c in emulator.calls if c.verb == 'patch'} == {'application/merge-patch+json'}
    assert len(emulator.writes('patch', 'deployments')) == 3
    assert len(emulator.writes('patch', 'deployments', ok=True)) == 1
    assert len(emulator.writes(ok=False)) == 4
    assert emulator.rbac_rules() == {('', 'configmaps', 'create'), ('', 'configmaps', 'patch'),
                                     ('', 'configmaps', 'list'), ('apps', 'deployments', 'create'),
                                     ('apps', 'deployments', 'patch')}
    role_rules = [{'apiGroups': [''], 'resources': ['configmaps'], 'verbs': ['create', 'list']},
                  {'apiGroups': ['apps'], 'resources': ['*'], 'verbs': ['create', 'patch']}]
    assert emulator.ungranted(role_rules) == [('', 'configmaps', 'patch')]


async def test_discovery_lists_the_resources(emulator: ServegraphEmulator) -> None:
    _, group = await call(emulator, 'GET', '/apis/servegraph.io/v1alpha1')
    names = {r['name']: r for r in group['resources']}
    assert set(names) == {'modeldeployments', 'modeldeployments/status'}
    assert names['modeldeployments']['kind'] == 'ModelDeployment' and names['modeldeployments']['namespaced']
    assert {'watch', 'list', 'patch'} <= set(names['modeldeployments']['verbs'])
    _, apis = await call(emulator, 'GET', '/apis')
    groups = {g['name'] for g in apis['groups']}
    assert {'apps', 'autoscaling', 'policy', 'rbac.authorization.k8s.io', 'servegraph.io'} <= groups
    for path, plural in [('/api/v1', 'serviceaccounts'), ('/apis/autoscaling/v2', 'horizontalpodautoscalers'),
                         ('/apis/policy/v1', 'poddisruptionbudgets'), ('/apis/rbac.authorization.k8s.io/v1', 'rolebindings')]:
        _, listing = await call(emulator, 'GET', path)
        assert plural in {r['name'] for r in listing['resources']}, path


async def test_kubernetes_client_call_api(emulator: ServegraphEmulator, api_client: kubernetes.client.ApiClient) -> None:
    def call_api(method: str, path: str, body: Any = None, content_type: str | None = None, **query: str) -> Any:
        return api_client.call_api(
            path, method, header_params={'Content-Type': content_type or 'application/json', 'Accept': 'application/json'},
            query_params=list(query.items()), body=body, response_types_map={200: 'object', 201: 'object'},
            _return_http_data_only=True)

    def scenario() -> None:
        call_api('POST', CMS, {'metadata': {'name': 'a', 'labels': {'k': 'v'}}, 'data': {'x': '1'}})
        call_api('POST', CMS, {'metadata': {'name': 'b'}})
        got = call_api('GET', f'{CMS}/a')
        assert got['data'] == {'x': '1'}
        patched = call_api('PATCH', f'{CMS}/a', {'data': {'x': '2'}}, 'application/merge-patch+json')
        assert patched['data'] == {'x': '2'}
        patched = call_api('PATCH', f'{CMS}/a', [{'op': 'add', 'path': '/data/y', 'value': '3'}], 'application/json-patch+json')
        assert patched['data'] == {'x': '2', 'y': '3'}
        assert [i['metadata']['name'] for i in call_api('GET', CMS, labelSelector='k=v')['items']] == ['a']
        try:
            call_api('POST', CMS, {'metadata': {'name': 'a'}})
        except kubernetes.client.ApiException as exc:
            assert exc.status == 409 and json.loads(exc.body)['reason'] == 'AlreadyExists'
        else:
            raise AssertionError('no 409')
        call_api('DELETE', f'{CMS}/b')

    await asyncio.to_thread(scenario)
    assert [obj['metadata']['name'] for obj in emulator.list_objects('v1/configmaps', NS)] == ['a']
    assert emulator.writes() == [('create', '', 'configmaps', NS, 'a'), ('create', '', 'configmaps', NS, 'b'),
                                 ('patch', '', 'configmaps', NS, 'a'), ('patch', '', 'configmaps', NS, 'a'),
                                 ('create', '', 'configmaps', NS, 'a'), ('delete', '', 'configmaps', NS, 'b')]


async def test_replace_deletecollection_and_patch_types(emulator: ServegraphEmulator) -> None:
    _, created = await call(emulator, 'POST', CMS, {'metadata': {'generateName': 'cfg-', 'labels': {'k': 'v'}}, 'data': {'a': '1'}})
    name = created['metadata']['name']
    assert name.startswith('cfg-') and len(name) > 4
    replacement = dict(created, data={'b': '2'})
    status, replaced = await call(emulator, 'PUT', f'{CMS}/{name}', replacement)
    assert status == 200 and replaced['data'] == {'b': '2'}
    status, body = await call(emulator, 'PUT', f'{CMS}/{name}', replacement)  # the old resourceVersion
    assert (status, body['reason']) == (409, 'Conflict')
    status, body = await call(emulator, 'PATCH', f'{CMS}/{name}', {'data': {'c': '3'}},
                              {'Content-Type': 'application/strategic-merge-patch+json'})
    assert status == 200 and body['data'] == {'b': '2', 'c': '3'}  # applied as a merge patch
    status, body = await call(emulator, 'PATCH', f'{CMS}/{name}', {}, {'Content-Type': 'application/apply-patch+yaml'})
    assert status == 415  # server-side apply is not emulated
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'other'}})
    status, body = await call(emulator, 'DELETE', CMS, labelSelector='k=v')
    assert status == 200 and [i['metadata']['name'] for i in body['items']] == [name]
    assert [o['metadata']['name'] for o in emulator.list_objects('v1/configmaps')] == ['other']
    assert emulator.writes('deletecollection') == [('deletecollection', '', 'configmaps', NS, None)]


async def test_orphan_propagation_and_delete_preconditions(emulator: ServegraphEmulator) -> None:
    _, owner = await call(emulator, 'POST', MDEPS, mdep('owner'))
    ref = {'apiVersion': 'servegraph.io/v1alpha1', 'kind': 'ModelDeployment', 'name': 'owner', 'uid': owner['metadata']['uid']}
    await call(emulator, 'POST', CMS, {'metadata': {'name': 'kept', 'ownerReferences': [ref]}})
    status, _ = await call(emulator, 'DELETE', f'{MDEPS}/owner', {'preconditions': {'uid': 'not-it'}})
    assert status == 409
    status, _ = await call(emulator, 'DELETE', f'{MDEPS}/owner', propagationPolicy='Orphan')
    assert status == 200
    kept = emulator.get_object('v1/configmaps', NS, 'kept')
    assert kept is not None and 'ownerReferences' not in kept['metadata']


async def test_watch_timeout_initial_events_and_in_process_writes(emulator: ServegraphEmulator) -> None:
    emulator.create_object('v1/configmaps', {'metadata': {'name': 'a'}}, namespace=NS)
    async with emulator.get(CMS, params={'watch': 'true', 'sendInitialEvents': 'true',
                                         'resourceVersionMatch': 'NotOlderThan', 'allowWatchBookmarks': 'true'}) as resp:
        added, bookmark = await read_events(resp, 2)
        assert added['type'] == 'ADDED' and added['object']['metadata']['name'] == 'a'
        assert bookmark['type'] == 'BOOKMARK'
        assert bookmark['object']['metadata']['annotations'] == {'k8s.io/initial-events-end': 'true'}
        emulator.patch_object('v1/configmaps', NS, 'a', {'data': {'x': 'y'}})  # as another controller would
        [modified] = await read_events(resp, 1)
        assert modified['type'] == 'MODIFIED' and modified['object']['data'] == {'x': 'y'}
        emulator.delete_object('v1/configmaps', NS, 'a')
        [deleted] = await read_events(resp, 1)
        assert deleted['type'] == 'DELETED'
    assert emulator.calls[-1].verb == 'watch' and emulator.writes() == []  # in-process: not recorded

    async with asyncio.timeout(3):
        async with emulator.get(CMS, params={'watch': 'true', 'timeoutSeconds': '0.1'}) as resp:
            assert await resp.content.read() == b''  # the server ends the stream
    # The history of versions is kmock's, as usual: created, modified, removed (its last state), gone.
    history = emulator.objects['v1/configmaps', NS, 'a'].history
    assert len(history) == 4 and history[1]['data'] == {'x': 'y'} and history[-1] is None
    assert emulator.objects['v1/configmaps', NS, 'a'].deleted


async def test_kmock_reactions_take_precedence(emulator: ServegraphEmulator) -> None:
    emulator['list v1/configmaps'] << 503
    status, _ = await call(emulator, 'GET', CMS)
    assert status == 503
    assert emulator.calls[-1].status == 503
    status, _ = await call(emulator, 'GET', DEPLOYS)
    assert status == 200


async def test_typed_kubernetes_apis_through_a_kubeconfig(emulator: ServegraphEmulator, kubeconfig: Any) -> None:
    def scenario() -> None:
        kubernetes.config.load_kube_config()
        core, apps = kubernetes.client.CoreV1Api(), kubernetes.client.AppsV1Api()
        created = core.create_namespaced_config_map(NS, kubernetes.client.V1ConfigMap(
            metadata=kubernetes.client.V1ObjectMeta(name='typed', labels={'k': 'v'}), data={'a': '1'}))
        assert created.metadata.uid and created.metadata.resource_version
        patched = core.patch_namespaced_config_map('typed', NS, {'data': {'b': '2'}})  # a strategic merge patch
        assert patched.data == {'a': '1', 'b': '2'}
        listing = core.list_namespaced_config_map(NS, label_selector='k=v')
        assert [item.metadata.name for item in listing.items] == ['typed']
        assert listing.metadata.resource_version
        # The emulator validates nothing, but the typed client's models check what they read back.
        apps.create_namespaced_deployment(NS, {'metadata': {'name': 'd'}, 'spec': {
            'replicas': 1, 'selector': {'matchLabels': {'app': 'd'}},
            'template': {'metadata': {'labels': {'app': 'd'}}, 'spec': {'containers': [{'name': 'c', 'image': 'i'}]}}}})
        scaled = apps.patch_namespaced_deployment('d', NS, [{'op': 'replace', 'path': '/spec/replicas', 'value': 3}])
        assert scaled.spec.replicas == 3 and scaled.metadata.generation == 2
        try:
            core.read_namespaced_config_map('missing', NS)
        except kubernetes.client.ApiException as exc:
            assert exc.status == 404
        else:
            raise AssertionError('no 404')

    await asyncio.to_thread(scenario)
    assert [c.content_type for c in emulator.calls if c.verb == 'patch'] == [
        'application/strategic-merge-patch+json', 'application/json-patch+json']
