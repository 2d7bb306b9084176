// The storage contract. Service logic (request-service.ts, registry-service.ts) runs every read and write
// through a StoreTx so that both back-ends share one implementation of the
// semantics; a store only keeps records, revisions and the change log.
import type { JsonObject } from '../struct.ts';

export type SideName = 'requester' | 'responder';
export type RequestStateName = 'pending' | 'answered' | 'expired';
export type DeliveryModeName = 'any' | 'unit' | 'selector';

export interface ApplicationRecord {
  name: string;
  revision: number;
}

export interface UnitRecord {
  name: string;
  application: string;
  ingress_address: string;
  egress_subnets: string[];
  labels: Record<string, string>;
  revision: number;
  /** SHA-256 of the unit's bearer token (authenticated mode); never the token itself. */
  token_hash?: string | null;
}

/** Counters from which the endpoint flags are derived; see flags.ts. */
export type RelationCounters = Record<string, number>;

export interface RelationRecord {
  id: string;
  interface: string;
  version: number;
  requester_application: string;
  requester_endpoint: string;
  responder_application: string;
  responder_endpoint: string;
  create_revision: number;
  revision: number;
  counters: RelationCounters;
}

export interface RelationUnitRecord {
  relation_id: string;
  unit: string;
  side: SideName;
  revision: number;
}

export interface RequestRecord {
  request_id: string;
  relation_id: string;
  interface: string;
  source_unit: string;
  source_ingress_address: string;
  source_egress_subnets: string[];
  source_labels: Record<string, string>;
  fields: JsonObject;
  delivery: { mode: DeliveryModeName; unit: string; selector: string };
  expected_units: string[];
  expected_count: number;
  answered_units: string[];
  response_count: number;
  state: RequestStateName;
  claim: { unit: string; expire_time: number } | null;
  /** Epoch milliseconds, or null for no time to live. */
  expire_time: number | null;
  /** Canonical body for idempotent replay checks. */
  body: string;
  create_time: number;
  update_time: number;
  create_revision: number;
  revision: number;
}

export interface ResponseRecord {
  request_id: string;
  relation_id: string;
  responder_unit: string;
  code: number;
  error: string;
  fields: JsonObject;
  create_time: number;
  revision: number;
}

export type FlagsRecord = Record<string, boolean>;

/** What decides whether a responder unit is sent a request and sees it as new. */
export type RequestState = Pick<RequestRecord, 'request_id' | 'interface' | 'state' | 'delivery' | 'expected_units' | 'answered_units' | 'claim'>;

/** A request as the change log holds it: without the body kept for replay checks. */
export type LoggedRequest = Omit<RequestRecord, 'body'>;

/**
 * A request change. Of the request before a change the log keeps only its
 * state (what watches compare to tell ADDED, MODIFIED and DELETED apart);
 * a deletion keeps the whole request as it was.
 */
export type RequestChange =
  | { kind: 'request'; before: RequestState | null; after: LoggedRequest }
  | { kind: 'request'; before: LoggedRequest; after: null };

/** What a change-log entry records; watches are derived from these alone. */
export type ChangeData =
  | RequestChange
  | { kind: 'response'; response: ResponseRecord }
  | { kind: 'unit-joined' | 'unit-departed'; unit: RelationUnitRecord }
  | { kind: 'relation-created'; relation: Omit<RelationRecord, 'counters'> }
  /** `units`: the members it had, so that a watch resumed from before the removal knows it was one (absent from changes logged before it was recorded). */
  | { kind: 'relation-removed'; relation: Omit<RelationRecord, 'counters'>; units?: RelationUnitRecord[] }
  | { kind: 'flags'; unit: string; side: SideName; flags: FlagsRecord }
  | { kind: 'registry'; what: string; name: string };

export interface Change {
  revision: number;
  /** Position within the revision: a write's changes keep their order. */
  index: number;
  relation_id: string;
  time: number;
  data: ChangeData;
}

export interface RequestPage {
  relationIds: readonly string[];
  /** Return requests created after this revision. */
  afterCreateRevision: number;
  limit: number;
  /** Only pending requests (an index keeps them apart, so history costs nothing). */
  pendingOnly?: boolean;
}

export interface ResponsePage {
  /** Return responses stored after this revision: a request's responses each have their own, as each is one write. */
  afterRevision: number;
  limit: number;
}

export interface StoreTx {
  /** The revision of this write, allocated on first use. */
  revision(): Promise<number>;
  /** For reads: the revision the state read reflects. */
  readRevision(): number;
  /** The time of this transaction, epoch milliseconds. */
  readonly now: number;

  getApplication(name: string): Promise<ApplicationRecord | undefined>;
  putApplication(record: ApplicationRecord): Promise<void>;
  deleteApplication(name: string): Promise<void>;
  listApplications(): Promise<ApplicationRecord[]>;

  getUnit(name: string): Promise<UnitRecord | undefined>;
  putUnit(record: UnitRecord): Promise<void>;
  /** Deletes the unit with its token hash; its memberships, flags and requests are not touched. */
  deleteUnit(name: string): Promise<void>;
  listUnits(application?: string): Promise<UnitRecord[]>;
  findUnitByTokenHash(hash: string): Promise<UnitRecord | undefined>;

  nextRelationNumber(): Promise<number>;
  getRelation(id: string): Promise<RelationRecord | undefined>;
  putRelation(record: RelationRecord): Promise<void>;
  deleteRelation(id: string): Promise<void>;
  listRelations(): Promise<RelationRecord[]>;
  listRelationUnits(relationId: string): Promise<RelationUnitRecord[]>;
  listUnitRelations(unit: string): Promise<RelationUnitRecord[]>;
  putRelationUnit(record: RelationUnitRecord): Promise<void>;
  deleteRelationUnit(relationId: string, unit: string): Promise<void>;

  getRequest(requestId: string): Promise<RequestRecord | undefined>;
  putRequest(record: RequestRecord): Promise<void>;
  deleteRequest(requestId: string): Promise<void>;
  /** Requests of the given relations in creation order. */
  listRequests(page: RequestPage): Promise<RequestRecord[]>;
  /** Pending requests whose time to live or claim lease ended by `now`. */
  listDue(now: number, limit: number): Promise<RequestRecord[]>;

  /** A request's responses in arrival (revision) order: all of them, or a page. */
  listResponses(requestId: string, page?: ResponsePage): Promise<ResponseRecord[]>;
  putResponse(record: ResponseRecord): Promise<void>;
  deleteResponses(requestId: string): Promise<void>;

  getFlags(relationId: string, unit: string): Promise<FlagsRecord | undefined>;
  putFlags(relationId: string, unit: string, flags: FlagsRecord): Promise<void>;
  deleteFlags(relationId: string, unit?: string): Promise<void>;

  /** Appends to the change log at this write's revision. */
  appendChange(relationId: string, data: ChangeData): Promise<void>;
}

/** What a checkpoint of the SQLite WAL by the checkpoint thread found, or why it failed. */
export type CheckpointResult =
  | {
      /** Frames in the WAL. */
      log: number;
      /** Frames of it now in the database file. */
      checkpointed: number;
    }
  | { error: string };

/** Where a store tells the operator about its connections and threads (a pino logger fits). */
export interface StoreLog {
  warn(details: object, message: string): void;
  info(details: object, message: string): void;
}

export interface CommitListener {
  (changes: readonly Change[]): void;
}

export interface Store {
  /** Runs fn as one atomic write; resolves once it is durable. */
  write<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T>;
  /** Runs fn against committed state. */
  read<T>(fn: (tx: StoreTx) => Promise<T>): Promise<T>;
  /**
   * Change-log entries with after < revision <= upTo, in order, where upTo is
   * at most after + limit and never beyond the committed revision. Fails with
   * OUT_OF_RANGE (REVISION_COMPACTED) when after is below the retained log.
   */
  changesSince(after: number, limit: number): Promise<{ changes: Change[]; upTo: number }>;
  /** The latest committed revision. */
  currentRevision(): number;
  /** Changes at or below this revision are gone from the log. */
  compactedRevision(): number;
  /** Drops change-log entries at or below the revision (never above current). */
  compact(revision: number): Promise<void>;
  /** Revision of the newest change at or before time (epoch ms), or 0. */
  revisionAt(time: number): Promise<number>;
  /** Called in revision order after every commit. */
  onCommit(listener: CommitListener): void;
  /**
   * Called when changes up to `compacted` were compacted away (by another
   * replica) before this store handed them to onCommit: listeners missed them.
   */
  onGap?(listener: (compacted: number) => void): void;
  /** Called with the seconds each commit took to become durable (for metrics). */
  onCommitTime?(listener: (seconds: number) => void): void;
  /** Called after each checkpoint of the SQLite WAL by the checkpoint thread (for metrics). */
  onCheckpoint?(listener: (result: CheckpointResult) => void): void;
  close(): Promise<void>;
}

/**
 * The revision a database restored from a backup goes on from: past every revision a gateway may have handed out
 * since the backup, taken as the clock in microseconds (a gateway hands out far fewer than a million a second), or
 * just past the current one when the clock is behind it.
 */
export function revisionAfterRestore(current: number, now: number): number {
  return Math.max(current + 1, now * 1000);
}
