// The change log's row format, the same in both stores: one row per revision,
// holding that write's changes in order as a JSON array of [relation_id, change] pairs.
import type { Change, ChangeData } from './store.ts';

type LoggedChange = [relationId: string, data: ChangeData];

/** The doc column of a write's log row. */
export function changeLogDoc(changes: readonly Change[]): string {
  return JSON.stringify(changes.map((change): LoggedChange => [change.relation_id, change.data]));
}

/** The changes a log row holds, in the order they were written. */
export function changesOfLogRow({ revision, time, doc }: { revision: number; time: number; doc: string }): Change[] {
  return (JSON.parse(doc) as LoggedChange[]).map(([relation_id, data], index) => ({ revision, index, relation_id, time, data }));
}
