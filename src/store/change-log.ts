// The change log's row format, the same in both stores: one row per commit,
// keyed by the commit's last revision, with the commit's time (its latest
// write's) and its changes in order as a JSON array of
// [revision, time, relation_id, change]. A commit holds every write of a batch,
// so a row may hold changes on either side of a reader's bounds: readers take
// the rows up to the first one that reaches their upper bound, and filter.
import type { Change, ChangeData } from './store.ts';

type LoggedChange = [revision: number, time: number, relationId: string, data: ChangeData];

/** The log row of a commit's changes (at least one, in revision order). */
export function changeLogRow(changes: readonly Change[]): { revision: number; time: number; doc: string } {
  let time = 0;
  const logged = changes.map((change): LoggedChange => {
    time = Math.max(time, change.time);
    return [change.revision, change.time, change.relation_id, change.data];
  });
  return { revision: changes.at(-1)?.revision ?? 0, time, doc: JSON.stringify(logged) };
}

/** The changes after `after` and up to `upTo` that log rows hold, in the order they were written. */
export function changesOfLogRows(rows: readonly { doc: string }[], after: number, upTo: number): Change[] {
  const changes: Change[] = [];
  let index = 0;
  for (const row of rows) {
    for (const [revision, time, relation_id, data] of JSON.parse(row.doc) as LoggedChange[]) {
      if (revision <= after || revision > upTo) continue;
      index = changes.at(-1)?.revision === revision ? index + 1 : 0;
      changes.push({ revision, index, relation_id, time, data });
    }
  }
  return changes;
}
