"""A Kubernetes API server in memory, good enough for kopf and the ``kubernetes`` client.

``ServegraphEmulator`` inherits ``kmock.KubernetesEmulator`` (kmock 0.8, pinned: it uses the
private ``_objects`` store and the private dispatch ``RawHandler._handle``) and replaces its
request handling for resource URLs with an apiserver-like one:

- server-set metadata: ``uid``, ``resourceVersion`` (one monotonic counter for the cluster),
  ``generation`` (1 on create, bumped when anything outside metadata/status changes, and when
  a deletion starts), ``creationTimestamp``; ``kind``/``apiVersion`` on every object;
- create (201, 409 AlreadyExists, ``generateName``), get, list (``kind: XList``, a real
  ``metadata.resourceVersion``, ``labelSelector`` and ``fieldSelector`` that really filter),
  PATCH with ``application/merge-patch+json`` (RFC 7386), ``application/json-patch+json``
  (RFC 6902, a failed ``test`` answers 422) and ``application/strategic-merge-patch+json``
  (treated as a merge patch: no list merging by key), PUT (replace), DELETE with finalizers
  (``deletionTimestamp``; removal when the last finalizer goes), DeleteOptions preconditions,
  ``propagationPolicy: Orphan``, and deletecollection;
- 409 Conflict on a write whose body carries a stale ``metadata.resourceVersion``;
- status subresource isolation for every resource whose discovery lists ``status``: writes to
  the main resource keep the stored status (also on create); writes to ``/status`` change
  only ``status``; a no-op write changes nothing (no new resourceVersion, no watch event);
- watches from a single ordered event log: no event is lost between the initial snapshot and
  the live stream; ``?resourceVersion=N`` streams the events after N (``0``/absent: synthetic
  ADDED first), ``sendInitialEvents`` ends the initial events with a BOOKMARK,
  ``timeoutSeconds`` closes the stream, and :meth:`expire_watches` / :meth:`compact` make
  streams and stale resourceVersions answer ``ERROR 410 Gone`` as a real apiserver does;
- ownerReference garbage collection (background): when an object is removed, every object all
  of whose owners are gone is deleted too (recursively, with DELETED events; dependents with
  finalizers get a deletionTimestamp);
- request recording (:attr:`calls`, :meth:`writes`, :meth:`rbac_rules`) and fault injection
  (:meth:`inject`: the next N matching requests answer a status, e.g. 409, 429 with
  Retry-After, 500).

User-defined kmock reactions (``emulator['patch apps/v1/deployments'] << 500``) still take
precedence over this emulation, as in kmock.

Usage (fixtures in conftest.py: ``emulator``, ``api_client``, ``kubeconfig``, ``run_operator``)::

    emulator.create_object('v1/configmaps', {...}, namespace='ns')   # in-process, with events,
    emulator.patch_object(res, ns, name, {...}, subresource='status') # not recorded as calls
    emulator.get_object(res, ns, name) / list_objects(res, ns, label_selector) / delete_object(...)
    emulator.writes('create', 'configmaps')       # [(verb, group, resource, namespace, name)]
    emulator.calls                                # every Call(verb, group, resource, subresource,
                                                  #   namespace, name, status, body, content_type)
    emulator.rbac_rules()                         # {(group, resource[/sub], verb)}
    emulator.ungranted(role['rules'])             # what was used that the Role does not grant
    emulator.inject('patch', 'apps/deployments', 429, retry_after=1, times=2)
    emulator.expire_watches() / compact() / watching(res) / resource_version
    emulator.objects[res, ns, name].history       # kmock's versioned store, as usual

The in-process methods and the server run in the test's event loop: call them from the loop,
and call the synchronous ``kubernetes`` client only through ``asyncio.to_thread``. Not emulated: server-side apply (415), field
managers, admission (validation, defaulting, pruning by a CRD schema), namespace existence and
namespace deletion, foreground deletion, subresources other than ``status``, bookmarks other
than the initial-events one, authentication and authorisation.
"""

from __future__ import annotations

import asyncio
import bisect
import copy
import dataclasses
import datetime
import functools
import gzip
import importlib.resources
import json
import re
import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import aiohttp.web
import kmock
from kmock._internal import apps, references, rendering

Key = tuple[references.resource, str | None, str]

# Verbs (as RBAC names them) that change state.
WRITE_VERBS = frozenset({'create', 'update', 'patch', 'delete', 'deletecollection'})

MERGE_PATCH = 'application/merge-patch+json'
JSON_PATCH = 'application/json-patch+json'
STRATEGIC_PATCH = 'application/strategic-merge-patch+json'
APPLY_PATCH = 'application/apply-patch+yaml'

MODELDEPLOYMENTS = kmock.resource('servegraph.io', 'v1alpha1', 'modeldeployments')
MODELDEPLOYMENT_INFO = kmock.ResourceInfo(
    kind='ModelDeployment',
    singular='modeldeployment',
    namespaced=True,
    shortnames={'mdep'},
    categories={'all'},
    verbs={'get', 'list', 'watch', 'create', 'update', 'patch', 'delete', 'deletecollection'},
    subresources={'status'},
)


class ApiError(Exception):
    """An apiserver error, answered as a ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f'{code} {reason}: {message}')
        self.code = code
        self.reason = reason
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def status(self) -> dict[str, Any]:
        return {
            'kind': 'Status',
            'apiVersion': 'v1',
            'metadata': {},
            'status': 'Failure',
            'message': self.message,
            'reason': self.reason,
            'details': self.details,
            'code': self.code,
        }


REASONS = {
    400: 'BadRequest', 401: 'Unauthorized', 403: 'Forbidden', 404: 'NotFound',
    405: 'MethodNotAllowed', 409: 'Conflict', 410: 'Gone', 415: 'UnsupportedMediaType',
    422: 'Invalid', 429: 'TooManyRequests', 500: 'InternalError', 503: 'ServiceUnavailable',
    504: 'Timeout',
}


@dataclasses.dataclass
class Call:
    """One API request to a resource URL, as RBAC sees it; ``status`` is the answer's code.

    For a create, ``name`` is the object's name from the body (RBAC sees none).
    ``body`` is the parsed JSON body (None if none), ``content_type`` the request's.
    """

    verb: str
    group: str
    resource: str
    subresource: str | None
    namespace: str | None
    name: str | None
    status: int | None = None
    body: Any = None
    content_type: str = ''

    @property
    def write(self) -> tuple[str, str, str, str | None, str | None]:
        return self.verb, self.group, self.resource, self.namespace, self.name


@dataclasses.dataclass
class Fault:
    """Answer the next ``times`` requests matching the criteria with ``status``."""

    verb: str | None
    resource: str | None  # a plural, or "group/plural"; None for any
    status: int
    times: int
    retry_after: float | None = None
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    message: str | None = None
    used: int = 0

    def matches(self, call: Call) -> bool:
        if self.used >= self.times:
            return False
        if self.verb is not None and self.verb != call.verb:
            return False
        if self.resource is not None:
            group, _, plural = self.resource.rpartition('/')
            if plural != call.resource or ('/' in self.resource and group != call.group):
                return False
        if self.namespace is not None and self.namespace != call.namespace:
            return False
        if self.name is not None and self.name != call.name:
            return False
        return self.subresource is None or self.subresource == call.subresource


@dataclasses.dataclass(eq=False)
class _Watcher:
    resource: references.resource
    namespace: str | None
    name: str | None
    labels: list[tuple[str, str, frozenset[str]]]
    fields: list[tuple[str, str, str]]
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    expired: bool = False
    closed: bool = False


class _Reply(Exception):
    """Carries a finished answer out of kmock's reaction machinery to :meth:`_handle`."""

    def __init__(self, body: Any, status: int = 200) -> None:
        super().__init__()
        self.body = body
        self.status = status


class _Watch(Exception):
    """Asks :meth:`_handle` to stream a watch for the request."""


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace('+00:00', 'Z')


def _verb(request: rendering.Request) -> str:
    method = str(request.method.value if hasattr(request.method, 'value') else request.method).upper()
    if method == 'GET':
        if request.params.get('watch') in ('true', '1'):
            return 'watch'
        return 'get' if request.name else 'list'
    return {
        'POST': 'create', 'PUT': 'update', 'PATCH': 'patch',
        'DELETE': 'delete' if request.name else 'deletecollection',
    }.get(method, method.lower())


# Label selectors: equality (=, ==, !=), set-based (in, notin) and existence (key, !key).
_SET_TERM = re.compile(r'^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$')
_EQ_TERM = re.compile(r'^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$')
_EXISTS_TERM = re.compile(r'^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$')


def _split_terms(selector: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, char in enumerate(selector):
        if char == '(':
            depth += 1
        elif char == ')':
            depth -= 1
        elif char == ',' and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return [term for term in terms if term.strip()]


def parse_label_selector(selector: str) -> list[tuple[str, str, frozenset[str]]]:
    """Parse a label selector into (key, op, values) requirements; 400 if malformed."""
    requirements = []
    for term in _split_terms(selector or ''):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match.group(3).split(',') if v.strip())
            requirements.append((match.group(1), match.group(2), values))
        elif match := _EQ_TERM.match(term):
            op = '!=' if match.group(2) == '!=' else '='
            requirements.append((match.group(1), op, frozenset({match.group(3)})))
        elif match := _EXISTS_TERM.match(term):
            requirements.append((match.group(2), '!' if match.group(1) else 'exists', frozenset()))
        else:
            raise ApiError(400, 'BadRequest', f'unable to parse requirement: {term!r}')
    return requirements


def labels_match(labels: Mapping[str, str], requirements: Iterable[tuple[str, str, frozenset[str]]]) -> bool:
    for key, op, values in requirements:
        present = key in labels
        value = labels.get(key)
        ok = {
            '=': present and value in values,
            '!=': not present or value not in values,
            'in': present and value in values,
            'notin': not present or value not in values,
            'exists': present,
            '!': not present,
        }[op]
        if not ok:
            return False
    return True


def parse_field_selector(selector: str) -> list[tuple[str, str, str]]:
    """Parse a field selector into (dotted.path, op, value); any path of the object is allowed."""
    requirements = []
    for term in _split_terms(selector or ''):
        match = re.match(r'^\s*([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*?)\s*$', term)
        if not match:
            raise ApiError(400, 'BadRequest', f'invalid field selector: {term!r}')
        requirements.append((match.group(1), '!=' if match.group(2) == '!=' else '=', match.group(3)))
    return requirements


def fields_match(obj: Mapping[str, Any], requirements: Iterable[tuple[str, str, str]]) -> bool:
    for path, op, expected in requirements:
        value: Any = obj
        for part in path.split('.'):
            value = value.get(part) if isinstance(value, Mapping) else None
        actual = '' if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        if (actual == expected) != (op == '='):
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == '':
        return []
    if not path.startswith('/'):
        raise ApiError(422, 'Invalid', f'invalid JSON pointer: {path!r}')
    return [part.replace('~1', '/').replace('~0', '~') for part in path[1:].split('/')]


def _resolve(doc: Any, parts: list[str]) -> Any:
    for part in parts:
        if isinstance(doc, list):
            doc = doc[int(part)]
        elif isinstance(doc, dict):
            doc = doc[part]
        else:
            raise KeyError(part)
    return doc


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 JSON patch; a failed ``test`` or a bad path answers 422 as the apiserver does."""
    if not isinstance(ops, list):
        raise ApiError(400, 'BadRequest', 'a JSON patch must be a list of operations')
    doc = copy.deepcopy(doc)
    for op in ops:
        kind, parts = op.get('op'), _pointer(op.get('path', ''))
        try:
            if kind == 'test':
                if _resolve(doc, parts) != op.get('value'):
                    raise ApiError(422, 'Invalid', f'the server rejected our request due to an error in our request: '
                                   f'testing value {op.get("path")} failed')
                continue
            if kind in ('move', 'copy'):
                value = copy.deepcopy(_resolve(doc, _pointer(op['from'])))
                if kind == 'move':
                    doc = _remove(doc, _pointer(op['from']))
                doc = _add(doc, parts, value)
            elif kind == 'add':
                doc = _add(doc, parts, copy.deepcopy(op['value']))
            elif kind == 'remove':
                doc = _remove(doc, parts)
            elif kind == 'replace':
                _resolve(doc, parts)  # must exist
                doc = _add(_remove(doc, parts), parts, copy.deepcopy(op['value']))
            else:
                raise ApiError(422, 'Invalid', f'unknown JSON patch operation: {kind!r}')
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ApiError(422, 'Invalid', f'JSON patch {op!r} failed: {exc!r}') from None
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1])
    if isinstance(parent, list):
        parent.insert(len(parent) if parts[-1] == '-' else int(parts[-1]), value)
    elif isinstance(parent, dict):
        parent[parts[-1]] = value
    else:
        raise KeyError(parts[-1])
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    if not parts:
        return None
    parent = _resolve(doc, parts[:-1])
    if isinstance(parent, list):
        del parent[int(parts[-1])]
    else:
        del parent[parts[-1]]
    return doc


@functools.cache
def _bundled_resources() -> bytes:
    return gzip.decompress(importlib.resources.files('kmock._internal').joinpath('resources.json.gz').read_bytes())


class ServegraphEmulator(kmock.KubernetesEmulator):
    """kmock's emulator with the apiserver semantics that kopf and the operator rely on."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = 1  # as in a real cluster, an empty list is never at resourceVersion "0"
        self._compacted_rv = 0
        self._events: list[tuple[int, references.resource, str, dict[str, Any]]] = []
        self._watchers: set[_Watcher] = set()
        self._closing = False
        self._faults: list[Fault] = []
        self._server_tasks: set[asyncio.Task[Any]] = set()
        self.calls: list[Call] = []
        # Not ``load_bundled()``: it calls the deprecated importlib.resources.read_binary,
        # an error under filterwarnings=error. Same file, read with files().
        self.resources.load_data(_bundled_resources())
        self.resources[MODELDEPLOYMENTS] = MODELDEPLOYMENT_INFO
        # PUT and collection DELETE have no kmock action: catch every resource URL left over.
        self.fallback[re.compile(r'/apis?/.+')] << self._dispatch

    # -------------------------------------------------------------------------------------
    # Public API for tests.

    def writes(
        self, verb: str | None = None, resource: str | None = None, *, ok: bool | None = None,
    ) -> list[tuple[str, str, str, str | None, str | None]]:
        """(verb, group, resource, namespace, name) of every write request, in order.

        ``ok=True`` keeps only the 2xx answers, ``ok=False`` only the failed ones.
        """
        return [
            call.write for call in self.calls
            if call.verb in WRITE_VERBS
            and (verb is None or call.verb == verb)
            and (resource is None or call.resource == resource)
            and (ok is None or ok == (call.status is not None and 200 <= call.status < 300))
        ]

    def rbac_rules(self) -> set[tuple[str, str, str]]:
        """(apiGroup, resource[/subresource], verb) of every request made, for an RBAC check
        (compare with a Role's rules: every tuple must be granted by some rule)."""
        return {
            (call.group, f'{call.resource}/{call.subresource}' if call.subresource else call.resource, call.verb)
            for call in self.calls
        }

    def ungranted(self, rules: Iterable[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
        """The (group, resource[/sub], verb) used so far that no RBAC rule grants; ``rules``
        as in a Role/ClusterRole (apiGroups, resources, verbs; ``*`` wildcards;
        resourceNames ignored, i.e. assumed to match)."""
        def granted(group: str, resource: str, verb: str) -> bool:
            return any(
                ({'*', group} & set(rule.get('apiGroups', [])))
                and ({'*', resource} & set(rule.get('resources', [])))
                and ({'*', verb} & set(rule.get('verbs', [])))
                for rule in rules
            )
        return sorted(rule for rule in self.rbac_rules() if not granted(*rule))

    def inject(
        self,
        verb: str | None,
        resource: str | None,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        message: str | None = None,
    ) -> Fault:
        """Answer the next ``times`` requests matching (verb, resource, ...) with ``status``.

        ``verb`` is an RBAC verb (get, list, watch, create, update, patch, delete,
        deletecollection), ``resource`` a plural or "group/plural" (``None``: any). The
        request does not reach the store. Returns the fault; ``fault.used`` counts the hits.
        """
        fault = Fault(verb, resource, status, times, retry_after, namespace, name, subresource, message)
        self._faults.append(fault)
        return fault

    def expire_watches(self, *, resource: str | references.resource | None = None) -> int:
        """Send ``ERROR 410 Gone`` to every open watch (of a resource) and close it.

        Returns the number of streams expired. Clients re-list, as from a real apiserver.
        """
        wanted = None if resource is None else kmock.resource(resource)
        count = 0
        for watcher in list(self._watchers):
            if not watcher.expired and not watcher.closed and (wanted is None or wanted.check(watcher.resource)):
                watcher.expired = True
                watcher.wake.set()
                count += 1
        return count

    def compact(self) -> None:
        """Forget the event history: watches from an older resourceVersion answer 410 Gone."""
        self._compacted_rv = self._rv

    def close_watches(self) -> None:
        """End every watch stream (no error) and refuse new ones: used on teardown."""
        self._closing = True
        for watcher in list(self._watchers):
            watcher.closed = True
            watcher.wake.set()

    def watching(self, resource: str | references.resource, namespace: str | None = None) -> int:
        """How many watch streams are open on a resource (in a namespace, or cluster-wide)."""
        wanted = kmock.resource(resource)
        return sum(1 for watcher in self._watchers
                   if not watcher.expired and not watcher.closed
                   and wanted.check(watcher.resource) and (namespace is None or watcher.namespace == namespace))

    @property
    def resource_version(self) -> int:
        return self._rv

    def is_server_task(self, task: asyncio.Task[Any]) -> bool:
        """Whether a task serves this emulator's HTTP connections (for kopf's ``ignored=``)."""
        if task in self._server_tasks:
            return True
        qualname = getattr(task.get_coro(), '__qualname__', '')
        return qualname.startswith('RequestHandler.')

    # In-process access for tests (no HTTP, not recorded in calls): the same semantics & events.

    def get_object(self, resource: str | references.resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        obj = self._current(self._key(resource, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, resource: str | references.resource, namespace: str | None = None,
                     label_selector: str = '') -> list[dict[str, Any]]:
        res = kmock.resource(resource)
        requirements = parse_label_selector(label_selector)
        return [copy.deepcopy(obj) for key, obj in self._iter(res, namespace)
                if labels_match(obj.get('metadata', {}).get('labels') or {}, requirements)]

    def create_object(self, resource: str | references.resource, body: Mapping[str, Any],
                      namespace: str | None = None) -> dict[str, Any]:
        return self._create(kmock.resource(resource), namespace, dict(body))

    def patch_object(self, resource: str | references.resource, namespace: str | None, name: str,
                     patch: Any, *, subresource: str | None = None, content_type: str = MERGE_PATCH) -> dict[str, Any]:
        return self._patch(self._key(resource, namespace, name), patch, content_type, subresource)

    def delete_object(self, resource: str | references.resource, namespace: str | None, name: str) -> dict[str, Any]:
        return self._delete(self._key(resource, namespace, name), {})

    # -------------------------------------------------------------------------------------
    # Request handling.

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._server_tasks.add(task)
            task.add_done_callback(self._server_tasks.discard)
        if request.resource is None or request.resource.plural is None:  # discovery & others
            return await apps.RawHandler._handle(self, request)

        call = Call(
            verb=_verb(request), group=request.resource.group or '', resource=request.resource.plural,
            subresource=request.subresource, namespace=request.namespace, name=request.name,
            content_type=request.headers.get('Content-Type', '').split(';')[0].strip(),
        )
        self.calls.append(call)
        try:
            call.body = self._body(request)
            if call.verb == 'create' and isinstance(call.body, Mapping):
                call.name = (call.body.get('metadata') or {}).get('name')
            for fault in self._faults:
                if fault.matches(call):
                    fault.used += 1
                    headers = {'Retry-After': f'{fault.retry_after:g}'} if fault.retry_after is not None else {}
                    details = {'retryAfterSeconds': int(fault.retry_after)} if fault.retry_after is not None else {}
                    raise ApiError(fault.status, REASONS.get(fault.status, 'Unknown'),
                                   fault.message or f'injected fault for {call.verb} {call.resource}',
                                   details=details, headers=headers)
            try:
                response = await apps.RawHandler._handle(self, request)
            except _Reply as reply:
                response = aiohttp.web.json_response(reply.body, status=reply.status)
            except _Watch:
                response = await self._stream_watch(request)
        except ApiError as exc:
            response = aiohttp.web.json_response(exc.status(), status=exc.code, headers=exc.headers)
        call.status = response.status
        return response

    # kmock registers these bound methods as its fallbacks for the guessed actions.
    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        return await self._dispatch(request)

    async def _serve_fetch(self, request: rendering.Request) -> rendering.Payload:
        return await self._dispatch(request)

    async def _serve_create(self, request: rendering.Request) -> rendering.Payload:
        return await self._dispatch(request)

    async def _serve_update(self, request: rendering.Request) -> rendering.Payload:
        return await self._dispatch(request)

    async def _serve_delete(self, request: rendering.Request) -> rendering.Payload:
        return await self._dispatch(request)

    async def _serve_watch(self, request: rendering.Request) -> rendering.Payload:  # type: ignore[override]
        return await self._dispatch(request)

    async def _dispatch(self, request: rendering.Request) -> rendering.Payload:
        res = request.resource
        if res is None or res.plural is None:
            raise ApiError(404, 'NotFound', 'the server could not find the requested resource')
        if res not in self.resources:
            raise ApiError(404, 'NotFound', f'the server could not find the requested resource ({res.plural})')
        verb = _verb(request)
        if request.subresource is not None and (
            request.subresource != 'status' or 'status' not in self.resources[res].subresources
            or verb not in ('get', 'update', 'patch')
        ):
            raise ApiError(404, 'NotFound', f'the server could not find the requested resource '
                                            f'({res.plural}/{request.subresource})')
        if verb == 'watch':
            raise _Watch()
        body = self._body(request)
        if verb == 'list':
            raise _Reply(self._list(request))
        if verb == 'deletecollection':
            raise _Reply(self._delete_collection(request, body))
        if verb == 'create':
            raise _Reply(self._create(res, request.namespace, body), status=201)
        assert request.name is not None
        key: Key = (res, request.namespace, request.name)
        if verb == 'get':
            obj = self._current(key)
            if obj is None:
                raise self._not_found(key)
            raise _Reply(copy.deepcopy(obj))
        if verb == 'patch':
            content_type = request.headers.get('Content-Type', '').split(';')[0].strip()
            raise _Reply(self._patch(key, body, content_type, request.subresource))
        if verb == 'update':
            raise _Reply(self._replace(key, body, request.subresource))
        if verb == 'delete':
            options = dict(body or {})
            if 'propagationPolicy' in request.params:
                options['propagationPolicy'] = request.params['propagationPolicy']
            raise _Reply(self._delete(key, options))
        raise ApiError(405, 'MethodNotAllowed', f'{request.method} is not supported here')

    @staticmethod
    def _body(request: rendering.Request) -> Any:
        if not request.body:
            return None
        try:
            return json.loads(request.body)
        except ValueError:
            raise ApiError(400, 'BadRequest', 'the request body is not JSON') from None

    # -------------------------------------------------------------------------------------
    # The store: kmock's ``_objects`` (so ``emulator.objects[...]`` and its history work).

    @staticmethod
    def _key(resource: str | references.resource, namespace: str | None, name: str) -> Key:
        return kmock.resource(resource), namespace, name

    def _current(self, key: Key) -> dict[str, Any] | None:
        if key in self._objects and not self._objects[key].deleted:
            return copy.deepcopy(self._objects[key].raw)
        return None

    def _iter(self, resource: references.resource, namespace: str | None) -> list[tuple[Key, dict[str, Any]]]:
        return [
            (key, copy.deepcopy(obj.raw)) for key, obj in self._objects.items()
            if key[0] == resource and (namespace is None or key[1] == namespace) and not obj.deleted
        ]

    def _store(self, key: Key, obj: dict[str, Any]) -> None:
        frozen = copy.deepcopy(obj)
        if key not in self._objects:
            self._objects[key] = frozen
        elif self._objects[key].deleted:
            self._objects[key].create(frozen)
        else:
            self._objects[key].history.append(frozen)

    def _emit(self, resource: references.resource, kind: str, obj: Mapping[str, Any]) -> None:
        rv = int(obj['metadata']['resourceVersion'])
        self._events.append((rv, resource, kind, copy.deepcopy(dict(obj))))
        for watcher in self._watchers:
            watcher.wake.set()

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _not_found(self, key: Key) -> ApiError:
        res, _, name = key
        return ApiError(404, 'NotFound', f'{res.plural}.{res.group} "{name}" not found'.replace('. "', ' "'),
                        details={'name': name, 'group': res.group, 'kind': res.plural})

    def _conflict(self, key: Key, message: str) -> ApiError:
        res, _, name = key
        return ApiError(409, 'Conflict', f'Operation cannot be fulfilled on {res.plural} "{name}": {message}',
                        details={'name': name, 'group': res.group, 'kind': res.plural})

    def _type_meta(self, resource: references.resource) -> tuple[str, str]:
        info = self.resources[resource]
        api_version = f'{resource.group}/{resource.version}' if resource.group else str(resource.version)
        return api_version, info.kind or (resource.plural or '').capitalize()

    def _has_status(self, resource: references.resource) -> bool:
        return resource in self.resources and 'status' in self.resources[resource].subresources

    @staticmethod
    def _clean_meta(obj: dict[str, Any]) -> None:
        meta = obj.setdefault('metadata', {})
        for field in ('labels', 'annotations', 'finalizers', 'ownerReferences'):
            if field in meta and not meta[field]:
                del meta[field]

    # -------------------------------------------------------------------------------------
    # Verbs.

    def _list(self, request: rendering.Request) -> dict[str, Any]:
        assert request.resource is not None
        labels = parse_label_selector(request.params.get('labelSelector', ''))
        fields = parse_field_selector(request.params.get('fieldSelector', ''))
        items = [
            copy.deepcopy(obj) for _, obj in self._iter(request.resource, request.namespace)
            if labels_match(obj['metadata'].get('labels') or {}, labels) and fields_match(obj, fields)
        ]
        items.sort(key=lambda obj: (obj['metadata'].get('namespace') or '', obj['metadata']['name']))
        api_version, kind = self._type_meta(request.resource)
        return {
            'kind': f'{kind}List', 'apiVersion': api_version,
            'metadata': {'resourceVersion': str(self._rv)},
            'items': items,
        }

    def _create(self, res: references.resource, namespace: str | None, body: Any) -> dict[str, Any]:
        if not isinstance(body, Mapping):
            raise ApiError(400, 'BadRequest', 'the body of a create must be an object')
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault('metadata', {})
        info = self.resources[res]
        if info.namespaced:
            namespace = namespace or meta.get('namespace')
            if not namespace:
                raise ApiError(400, 'BadRequest', 'the namespace of the object is not specified')
            if meta.get('namespace') not in (None, namespace):
                raise ApiError(400, 'BadRequest', 'the namespace of the object does not match the URL')
            meta['namespace'] = namespace
        else:
            namespace = None
            meta.pop('namespace', None)
        if not meta.get('name') and meta.get('generateName'):
            meta['name'] = meta['generateName'] + secrets.token_hex(3)[:5]
        if not meta.get('name'):
            raise ApiError(422, 'Invalid', 'metadata.name: Required value: name or generateName is required')
        if meta.get('resourceVersion'):
            raise ApiError(500, 'InternalError', 'resourceVersion should not be set on objects to be created')
        key: Key = (res, namespace, meta['name'])
        if self._current(key) is not None:
            raise ApiError(409, 'AlreadyExists', f'{res.plural} "{meta["name"]}" already exists',
                           details={'name': meta['name'], 'group': res.group, 'kind': res.plural})
        api_version, kind = self._type_meta(res)
        obj['apiVersion'], obj['kind'] = api_version, kind
        if self._has_status(res):
            obj.pop('status', None)  # the main resource ignores status, also on create
        for field in ('uid', 'deletionTimestamp', 'deletionGracePeriodSeconds'):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1,
                    resourceVersion=self._next_rv())
        self._clean_meta(obj)
        self._store(key, obj)
        self._emit(res, 'ADDED', obj)
        # A dependent whose owners are all gone is collected at once, as the real GC would.
        if self._orphaned(obj):
            self._delete(key, {})
        return copy.deepcopy(obj)

    def _patch(self, key: Key, patch: Any, content_type: str, subresource: str | None) -> dict[str, Any]:
        old = self._current(key)
        if old is None:
            raise self._not_found(key)
        if content_type == JSON_PATCH:
            new = json_patch(old, patch)
        elif content_type in (MERGE_PATCH, STRATEGIC_PATCH, 'application/json', ''):
            if not isinstance(patch, Mapping):
                raise ApiError(400, 'BadRequest', 'a merge patch must be a JSON object')
            new = merge_patch(old, patch)
        else:
            raise ApiError(415, 'UnsupportedMediaType', f'the emulator does not support {content_type!r} patches')
        return self._write(key, old, new, subresource)

    def _replace(self, key: Key, body: Any, subresource: str | None) -> dict[str, Any]:
        old = self._current(key)
        if old is None:
            raise self._not_found(key)
        if not isinstance(body, Mapping):
            raise ApiError(400, 'BadRequest', 'the body of an update must be an object')
        new = copy.deepcopy(dict(body))
        new.setdefault('metadata', {})
        if not new['metadata'].get('resourceVersion'):  # unconditional update
            new['metadata']['resourceVersion'] = old['metadata']['resourceVersion']
        return self._write(key, old, new, subresource)

    def _write(self, key: Key, old: dict[str, Any], new: Any, subresource: str | None) -> dict[str, Any]:
        res = key[0]
        if not isinstance(new, dict):
            raise ApiError(422, 'Invalid', 'the patched object is not an object')
        new = copy.deepcopy(new)
        new.setdefault('metadata', {})
        if not isinstance(new['metadata'], dict):
            raise ApiError(422, 'Invalid', 'metadata must be an object')
        wanted_rv = new['metadata'].get('resourceVersion')
        if wanted_rv and wanted_rv != old['metadata']['resourceVersion']:
            raise self._conflict(key, 'the object has been modified; please apply your changes '
                                      'to the latest version and try again')
        if subresource == 'status':
            result = copy.deepcopy(old)
            if 'status' in new:
                result['status'] = new['status']
            else:
                result.pop('status', None)
        else:
            result = new
            if self._has_status(res):
                if 'status' in old:
                    result['status'] = copy.deepcopy(old['status'])
                else:
                    result.pop('status', None)
        meta, old_meta = result['metadata'], old['metadata']
        for field in ('name', 'namespace', 'uid', 'creationTimestamp', 'generation',
                      'deletionTimestamp', 'deletionGracePeriodSeconds', 'resourceVersion'):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        result['apiVersion'], result['kind'] = old['apiVersion'], old['kind']
        self._clean_meta(result)
        if old_meta.get('deletionTimestamp'):
            added = set(meta.get('finalizers', [])) - set(old_meta.get('finalizers', []))
            if added:
                raise ApiError(422, 'Invalid', f'metadata.finalizers: Forbidden: no new finalizers can be added '
                                               f'if the object is being deleted, found new finalizers {sorted(added)}')
        if result == old:  # a no-op: no new resourceVersion, no event
            return copy.deepcopy(old)
        def spec_of(obj: Mapping[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in obj.items() if k not in ('metadata', 'status')}

        if spec_of(result) != spec_of(old):
            meta['generation'] = old_meta.get('generation', 1) + 1
        meta['resourceVersion'] = self._next_rv()
        self._store(key, result)
        self._emit(res, 'MODIFIED', result)
        if meta.get('deletionTimestamp') and not meta.get('finalizers'):
            return self._remove(key, result)
        return copy.deepcopy(result)

    def _delete(self, key: Key, options: Mapping[str, Any]) -> dict[str, Any]:
        obj = self._current(key)
        if obj is None:
            raise self._not_found(key)
        preconditions = options.get('preconditions') or {}
        if preconditions.get('uid') and preconditions['uid'] != obj['metadata']['uid']:
            raise self._conflict(key, f'Precondition failed: UID in precondition: {preconditions["uid"]}, '
                                      f'UID in object meta: {obj["metadata"]["uid"]}')
        if preconditions.get('resourceVersion') and preconditions['resourceVersion'] != obj['metadata']['resourceVersion']:
            raise self._conflict(key, 'the object has been modified; please apply your changes '
                                      'to the latest version and try again')
        if options.get('propagationPolicy') == 'Orphan':
            self._orphan_dependents(obj['metadata']['uid'])
        if obj['metadata'].get('deletionTimestamp'):
            return copy.deepcopy(obj)  # already being deleted
        if obj['metadata'].get('finalizers'):
            obj = copy.deepcopy(obj)
            obj['metadata'].update(deletionTimestamp=_now(), deletionGracePeriodSeconds=0,
                                   generation=obj['metadata'].get('generation', 1) + 1,
                                   resourceVersion=self._next_rv())
            self._store(key, obj)
            self._emit(key[0], 'MODIFIED', obj)
            return copy.deepcopy(obj)
        return self._remove(key, obj)

    def _remove(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        """Remove the object for good, then collect its dependents (background GC)."""
        final = copy.deepcopy(obj)
        final['metadata']['resourceVersion'] = self._next_rv()
        self._objects[key].history.append(copy.deepcopy(final))
        self._objects[key].delete()
        self._emit(key[0], 'DELETED', final)
        self._collect_garbage()
        return final

    def _delete_collection(self, request: rendering.Request, options: Any) -> dict[str, Any]:
        assert request.resource is not None
        listing = self._list(request)
        for item in listing['items']:
            key: Key = (request.resource, item['metadata'].get('namespace'), item['metadata']['name'])
            if self._current(key) is not None:
                self._delete(key, options or {})
        return listing

    # -------------------------------------------------------------------------------------
    # Garbage collection by ownerReferences.

    def _live_uids(self) -> set[str]:
        return {obj.raw['metadata']['uid'] for obj in self._objects.values() if not obj.deleted}

    def _orphaned(self, obj: Mapping[str, Any], live: set[str] | None = None) -> bool:
        owners = [ref.get('uid') for ref in obj.get('metadata', {}).get('ownerReferences') or []]
        if not owners:
            return False
        live = self._live_uids() if live is None else live
        return not any(uid in live for uid in owners)

    def _collect_garbage(self) -> None:
        while True:
            live = self._live_uids()
            victims = [
                key for key, obj in list(self._objects.items())
                if not obj.deleted and not obj.raw['metadata'].get('deletionTimestamp')
                and self._orphaned(obj.raw, live)
            ]
            if not victims:
                return
            for key in victims:
                if self._current(key) is not None:
                    self._delete(key, {})  # recursion happens through _remove()

    def _orphan_dependents(self, uid: str) -> None:
        for key, obj in list(self._objects.items()):
            if obj.deleted:
                continue
            refs = obj.raw['metadata'].get('ownerReferences') or []
            if any(ref.get('uid') == uid for ref in refs):
                kept = [ref for ref in refs if ref.get('uid') != uid]
                self._write(key, obj.raw, merge_patch(obj.raw, {'metadata': {'ownerReferences': kept or None}}), None)

    # -------------------------------------------------------------------------------------
    # Watches.

    async def _stream_watch(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        assert request.resource is not None and request._raw_request is not None
        params = request.params
        watcher = _Watcher(
            resource=request.resource, namespace=request.namespace, name=request.name,
            labels=parse_label_selector(params.get('labelSelector', '')),
            fields=parse_field_selector(params.get('fieldSelector', '')),
        )
        if request.name is not None:
            watcher.fields.append(('metadata.name', '=', request.name))
        since = params.get('resourceVersion') or None
        send_initial = params.get('sendInitialEvents') == 'true'
        initial: list[dict[str, Any]] = []
        expired = False
        # Everything from here to the registration is synchronous: no event can slip between.
        if since in (None, '0') or send_initial:
            for _, obj in sorted(self._iter(request.resource, request.namespace),
                                 key=lambda item: int(item[1]['metadata']['resourceVersion'])):
                if self._visible(watcher, obj):
                    initial.append({'type': 'ADDED', 'object': copy.deepcopy(obj)})
            if send_initial:
                api_version, kind = self._type_meta(request.resource)
                initial.append({'type': 'BOOKMARK', 'object': {
                    'kind': kind, 'apiVersion': api_version,
                    'metadata': {'resourceVersion': str(self._rv),
                                 'annotations': {'k8s.io/initial-events-end': 'true'}}}})
            position = len(self._events)
        else:
            try:
                since_rv = int(since)
            except ValueError:
                raise ApiError(400, 'BadRequest', f'invalid resourceVersion: {since!r}') from None
            if since_rv < self._compacted_rv:
                expired = True
                position = len(self._events)
            else:
                position = bisect.bisect_right([event[0] for event in self._events], since_rv)
        self._watchers.add(watcher)
        timeout = float(params['timeoutSeconds']) if params.get('timeoutSeconds') else None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        raw_request = request._raw_request
        response = aiohttp.web.StreamResponse(status=200, headers={'Content-Type': 'application/json'})
        try:
            await response.prepare(raw_request)
            for event in initial:
                await response.write(json.dumps(event).encode() + b'\n')
            while True:
                if expired or watcher.expired:
                    await response.write(json.dumps(self._gone()).encode() + b'\n')
                    break
                chunk = self._events[position:]
                position = len(self._events)
                for _, resource, kind, obj in chunk:
                    if resource == watcher.resource and self._visible(watcher, obj):
                        await response.write(json.dumps({'type': kind, 'object': obj}).encode() + b'\n')
                if watcher.expired:
                    continue
                if watcher.closed or self._closing:
                    break
                if position < len(self._events):
                    continue
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                transport = raw_request.transport
                if transport is None or transport.is_closing():
                    break
                watcher.wake.clear()
                try:
                    await asyncio.wait_for(watcher.wake.wait(), timeout=min(remaining or 0.5, 0.5))
                except TimeoutError:
                    pass
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client went away
        finally:
            self._watchers.discard(watcher)
        return response

    def _visible(self, watcher: _Watcher, obj: Mapping[str, Any]) -> bool:
        meta = obj.get('metadata', {})
        return ((watcher.namespace is None or meta.get('namespace') == watcher.namespace)
                and labels_match(meta.get('labels') or {}, watcher.labels)
                and fields_match(obj, watcher.fields))

    @staticmethod
    def _gone() -> dict[str, Any]:
        return {'type': 'ERROR', 'object': {
            'kind': 'Status', 'apiVersion': 'v1', 'metadata': {}, 'status': 'Failure',
            'message': 'too old resource version', 'reason': 'Expired', 'code': 410}}


async def eventually(predicate: Callable[[], Any], *, timeout: float = 5, what: str = 'condition') -> Any:
    """Poll ``predicate`` (sync) until truthy; its value, or AssertionError at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f'timed out after {timeout}s waiting for {what}')
        await asyncio.sleep(0.01)
