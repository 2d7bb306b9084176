// One SQLite file serves one gateway. A store keeps the latest revision, its
// caches and its watchers in memory, so a second gateway on the same file
// would hand out revisions the first also hands out, and neither would wake
// the other's watchers. The lock is SQLite's own (an fcntl lock) on a file
// beside the database: the kernel drops it when the process ends, however it
// ends, so a crash leaves nothing to clean up. SQLite also tells apart two
// connections of one process, so a second store in the same process is
// refused as well.
import { readlinkSync, realpathSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { Code, RelgateError } from '../errors.ts';

export interface DatabaseLock {
  release(): void;
}

/** The file that holds the lock of the database at `file`. */
export const lockFileOf = (file: string): string => `${file}-lock`;

/**
 * Where a path leads once its links are followed, as SQLite itself opens it: two names of one database file (a
 * symbolic link) share one lock. A file not made yet (a link's target included: SQLite makes it) is named by its
 * directory's real path; in a directory that is not there either, by its own (SQLite then refuses to open it).
 */
export function realPathOf(file: string, links = 0): string {
  try {
    return realpathSync(file);
  } catch {
    const target = linkTarget(file);
    if (target !== undefined && links < MAX_LINKS) return realPathOf(path.resolve(path.dirname(file), target), links + 1);
    try {
      return path.join(realpathSync(path.dirname(file)), path.basename(file));
    } catch {
      return path.resolve(file);
    }
  }
}

/** Links followed at most, as the kernel's own bound. */
const MAX_LINKS = 40;

function linkTarget(file: string): string | undefined {
  try {
    return readlinkSync(file);
  } catch {
    return undefined;
  }
}

/** Takes the database file at `databasePath` for this store, or refuses at once with DATABASE_IN_USE when another holds it. */
export function lockDatabaseFile(databasePath: string): DatabaseLock {
  const file = lockFileOf(realPathOf(databasePath));
  // No busy timeout: a gateway that holds the lock holds it for its whole life.
  const db = new Database(file, { timeout: 0 });
  try {
    // Exclusive locking keeps the lock after any transaction; the transaction that is never committed takes it now.
    db.pragma('locking_mode = EXCLUSIVE');
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    if (error instanceof Database.SqliteError && error.code.startsWith('SQLITE_BUSY')) {
      throw new RelgateError(
        Code.FAILED_PRECONDITION,
        `the database ${databasePath} is in use by another gateway (its lock file ${file} is held); one SQLite file serves one gateway: run replicas on PostgreSQL (--store)`,
        { reason: 'DATABASE_IN_USE', metadata: { path: databasePath, lock_file: file } },
      );
    }
    throw error;
  }
  return { release: () => db.close() };
}
