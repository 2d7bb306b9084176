// The dashboard: renders the state the gateway sends over server-sent events.
// Every value goes into the page as text (textContent), never as markup:
// field values are data from the units.
'use strict';

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function duration(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  if (ms < 3_600_000) return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
  return `${(ms / 3_600_000).toFixed(1)} h`;
}

function fill(tableId, items, columns, render) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  if (items.length === 0) {
    cell(body.insertRow(), 'none', 'empty').colSpan = columns;
    return;
  }
  for (const item of items) render(body.insertRow(), item);
}

function renderRelation(row, relation) {
  row.dataset.relationId = relation.id;
  cell(row, relation.id, 'id');
  cell(row, `${relation.interface} v${relation.version}`);
  cell(row, relation.requester);
  cell(row, relation.responder);
  const units = row.insertCell();
  if (relation.units.length === 0) units.textContent = 'no units joined';
  for (const unit of relation.units) {
    const line = document.createElement('div');
    line.className = 'unit';
    line.dataset.unit = unit.unit;
    line.append(`${unit.unit} (${unit.side}) `);
    for (const [flag, set] of Object.entries(unit.flags)) {
      if (!set) continue;
      const badge = document.createElement('span');
      badge.className = 'flag';
      badge.textContent = flag;
      line.append(badge);
    }
    units.append(line);
  }
}

/** The gateway's clock minus the browser's, so ages do not depend on the browser's clock. */
let clockOffset = 0;
const gatewayNow = () => Date.now() + clockOffset;

function renderWaiting(row, request) {
  row.dataset.requestId = request.request_id;
  cell(row, request.request_id, 'id');
  cell(row, request.relation_id, 'id');
  cell(row, request.source_unit);
  cell(row, request.delivery);
  cell(row, request.responses);
  cell(row, request.claimed_by || '-');
  cell(row, duration(Math.max(0, gatewayNow() - request.create_time)), 'age').dataset.created = String(request.create_time);
  cell(row, request.fields, 'fields');
}

/** Waiting times grow between updates. */
function refreshAges() {
  for (const age of document.querySelectorAll('#waiting td.age')) age.textContent = duration(Math.max(0, gatewayNow() - Number(age.dataset.created)));
}

function renderResponse(row, response) {
  row.dataset.requestId = response.request_id;
  cell(row, response.request_id, 'id');
  cell(row, response.relation_id, 'id');
  cell(row, response.responder_unit);
  cell(row, response.code === 0 ? '0' : `${response.code} ${response.error}`, response.code === 0 ? '' : 'error');
  cell(row, duration(response.latency_ms), 'latency');
  cell(row, new Date(response.time).toISOString(), 'id');
  cell(row, response.fields, 'fields');
}

function render(state) {
  document.getElementById('revision').textContent = String(state.revision);
  document.getElementById('compacted').textContent = String(state.compacted_revision);
  const shown = state.waiting.length < state.waiting_total ? ` (oldest ${state.waiting.length} of ${state.waiting_total})` : ` (${state.waiting_total})`;
  document.getElementById('waiting-total').textContent = shown;
  fill('relations', state.relations, 5, renderRelation);
  clockOffset = state.time - Date.now();
  fill('waiting', state.waiting, 8, renderWaiting);
  fill('responses', state.responses, 7, renderResponse);
  document.body.dataset.revision = String(state.revision);
}

function setStatus(text, className) {
  const status = document.getElementById('status');
  status.textContent = text;
  status.className = className;
}

setInterval(refreshAges, 1000);

const events = new EventSource('events');
events.addEventListener('state', (message) => {
  render(JSON.parse(message.data));
  setStatus('live', 'live');
});
events.addEventListener('error', () => setStatus('reconnecting', 'offline'));
