// Checks on what a watch stream delivered: the guarantees every watch log
// must keep (revision order, no duplicate, whole revisions per message), and
// the comparison of a log with the server's change log.
import { expect } from 'vitest';
import type { Event, Msg } from './streams.ts';

/** What identifies an event within a stream: the same key twice is a duplicate. */
export function eventKey(event: Msg): string {
  const object = event.request?.request_id ?? (event.response ? `${event.response.request_id}/${event.response.responder_unit}` : (event.unit?.unit ?? event.object ?? ''));
  return `${event.type}|${event.revision}|${event.relation_id}|${object}`;
}

/** Every change event: neither BOOKMARK nor SNAPSHOT_COMPLETE nor snapshot ADDED (batch revision 0). */
export function changeEvents(events: readonly Event[]): Event[] {
  return events.filter((event) => event.type !== 'EVENT_TYPE_BOOKMARK' && event.type !== 'EVENT_TYPE_SNAPSHOT_COMPLETE');
}

/**
 * The guarantees of one stream's batches: batch revisions increase (snapshot
 * batches before the last say 0; progress events may repeat a revision),
 * every event's revision lies in
 * (previous batch revision, batch revision], events are in revision order,
 * no event repeats, and no revision's events are split over two batches.
 */
export function expectWellFormed(batches: readonly Msg[]): void {
  let previous = -1;
  let lastEvent = 0;
  const seen = new Set<string>();
  const batchOfRevision = new Map<string, number>();
  const problems: string[] = [];
  batches.forEach((batch, index) => {
    const revision = Number(batch.revision);
    const snapshotPart = revision === 0 && (batch.events as Msg[]).every((event) => event.type === 'EVENT_TYPE_ADDED' || event.type === 'EVENT_TYPE_FLAGS');
    // A progress event may repeat the revision already reached; changes always move it on.
    const progressOnly = (batch.events as Msg[]).every((event) => event.type === 'EVENT_TYPE_BOOKMARK');
    const floor = previous;
    if (!snapshotPart) {
      if (revision < previous || (revision === previous && !progressOnly)) problems.push(`batch ${index} revision ${revision} after ${previous}`);
      previous = revision;
    }
    for (const event of batch.events as Msg[]) {
      const at = Number(event.revision);
      const live = event.type !== 'EVENT_TYPE_BOOKMARK' && event.type !== 'EVENT_TYPE_SNAPSHOT_COMPLETE';
      if (!snapshotPart && at > revision) problems.push(`event at ${at} in batch ${index} of revision ${revision}`);
      if (at < lastEvent) problems.push(`event at ${at} after an event at ${lastEvent}`);
      lastEvent = Math.max(lastEvent, at);
      if (!live) continue;
      if (!snapshotPart && at <= floor) problems.push(`event at ${at} in batch ${index} after batch revision ${floor}`);
      const key = eventKey(event);
      if (seen.has(key)) problems.push(`duplicate ${key}`);
      seen.add(key);
      if (snapshotPart) continue;
      const first = batchOfRevision.get(event.revision);
      if (first !== undefined && first !== index) problems.push(`revision ${event.revision} split over batches ${first} and ${index}`);
      batchOfRevision.set(event.revision, index);
    }
  });
  expect(problems).toEqual([]);
}

/** Revisions of the events, in stream order, with consecutive repeats folded. */
export function revisionsOf(events: readonly Msg[]): number[] {
  const out: number[] = [];
  for (const event of events) {
    const revision = Number(event.revision);
    if (out.at(-1) !== revision) out.push(revision);
  }
  return out;
}
