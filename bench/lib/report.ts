// Turns measured systems into the comparison table: relgate's figure, the
// baseline's figure measured in the same run, their ratio and the target.
import type { LoadResult } from './load.ts';

export interface SystemResult {
  /** Key used by comparisons, e.g. "echo" or "relgate-session". */
  name: string;
  /** What was measured, for the table. */
  label: string;
  levels: LoadResult[];
  /** Why the system could not be measured, when it could not. */
  error?: string;
}

/** A scenario measured as its own figures (memory, seconds, latency) against a target. */
export interface FigureRow {
  scenario: string;
  relgate: string;
  /** The same measurement of the baseline, '' where there is none. */
  baseline: string;
  ratio: string;
  target: string;
  /** Undefined where the row has no target. */
  met: boolean | undefined;
}

export type P50Target =
  /** relgate's p50 at 1 in flight at most this many milliseconds. */
  | { atMostMs: number }
  /** relgate's p50 at 1 in flight at most this multiple of the baseline's. */
  | { atMostTimes: number }
  /** relgate's p50 at 1 in flight below the baseline's. */
  | { below: true };

export interface Comparison {
  scenario: string;
  relgate: string;
  baseline: string;
  /** Round trips/s ratio to reach at the given number in flight. */
  throughput?: { inFlight: number; atLeast: number };
  p50?: P50Target;
}

export interface Row {
  scenario: string;
  inFlight: number;
  relgateLabel: string;
  relgate: LoadResult;
  baselineLabel: string;
  baseline: LoadResult;
  ratio: number;
  target: string;
  /** Undefined where the row has no target. */
  met: boolean | undefined;
}

export function compare(comparisons: readonly Comparison[], systems: ReadonlyMap<string, SystemResult>): { rows: Row[]; missing: string[] } {
  const rows: Row[] = [];
  const missing: string[] = [];
  for (const comparison of comparisons) {
    const relgate = systems.get(comparison.relgate);
    const baseline = systems.get(comparison.baseline);
    if (!relgate || !baseline || relgate.error || baseline.error) {
      missing.push(`${comparison.scenario}: ${[relgate, baseline].map((s) => s?.error).filter(Boolean).join('; ') || 'not measured in this run'}`);
      continue;
    }
    for (const ours of relgate.levels) {
      const theirs = baseline.levels.find((level) => level.inFlight === ours.inFlight);
      if (!theirs) continue;
      const ratio = ours.perSecond / theirs.perSecond;
      const checks = targetChecks(comparison, ours, theirs, ratio);
      rows.push({
        scenario: comparison.scenario,
        inFlight: ours.inFlight,
        relgateLabel: relgate.label,
        relgate: ours,
        baselineLabel: baseline.label,
        baseline: theirs,
        ratio,
        target: checks.map((check) => check.text).join('; '),
        met: checks.length === 0 ? undefined : checks.every((check) => check.met),
      });
    }
  }
  return { rows, missing };
}

function targetChecks(comparison: Comparison, ours: LoadResult, theirs: LoadResult, ratio: number): { text: string; met: boolean }[] {
  const checks: { text: string; met: boolean }[] = [];
  const { throughput, p50 } = comparison;
  if (throughput && throughput.inFlight === ours.inFlight) checks.push({ text: `>= ${throughput.atLeast}x`, met: ratio >= throughput.atLeast });
  if (p50 && ours.inFlight === 1) {
    if ('atMostMs' in p50) checks.push({ text: `p50 <= ${p50.atMostMs} ms`, met: ours.p50Ms <= p50.atMostMs });
    else if ('atMostTimes' in p50) checks.push({ text: `p50 <= ${p50.atMostTimes}x baseline's`, met: ours.p50Ms <= p50.atMostTimes * theirs.p50Ms });
    else checks.push({ text: "p50 below baseline's", met: ours.p50Ms < theirs.p50Ms });
  }
  return checks;
}

const rate = (value: number) => Math.round(value).toLocaleString('en-US');
const ms = (value: number) => (value < 10 ? value.toFixed(2) : value.toFixed(1));
const latency = (result: LoadResult) => `${ms(result.p50Ms)} / ${ms(result.p99Ms)}`;
const verdict = (met: boolean | undefined) => (met === undefined ? '' : met ? 'met' : 'MISSED');

const HEADER = ['Scenario', 'In flight', 'relgate', 'rt/s', 'p50 / p99 ms', 'Baseline', 'rt/s', 'p50 / p99 ms', 'Ratio', 'Target', ''];

function cells(row: Row): string[] {
  return [
    row.scenario,
    String(row.inFlight),
    row.relgateLabel,
    rate(row.relgate.perSecond),
    latency(row.relgate),
    row.baselineLabel,
    rate(row.baseline.perSecond),
    latency(row.baseline),
    `${row.ratio.toFixed(2)}x`,
    row.target,
    verdict(row.met),
  ];
}

export function markdownTable(rows: readonly Row[]): string {
  return markdown(HEADER, rows.map(cells));
}

/** The same table aligned for a terminal. */
export function textTable(rows: readonly Row[]): string {
  return text(HEADER, rows.map(cells));
}

const FIGURE_HEADER = ['Scenario', 'relgate', 'Baseline', 'Ratio', 'Target', ''];
const figureCells = (row: FigureRow) => [row.scenario, row.relgate, row.baseline, row.ratio, row.target, verdict(row.met)];

export function markdownFigures(rows: readonly FigureRow[]): string {
  return markdown(FIGURE_HEADER, rows.map(figureCells));
}

export function textFigures(rows: readonly FigureRow[]): string {
  return text(FIGURE_HEADER, rows.map(figureCells));
}

function markdown(header: string[], body: string[][]): string {
  const lines = [header, header.map(() => '---'), ...body];
  return lines.map((line) => `| ${line.join(' | ')} |`).join('\n');
}

function text(header: string[], body: string[][]): string {
  const lines = [header, ...body];
  const widths = header.map((_, i) => Math.max(...lines.map((line) => (line[i] ?? '').length)));
  return lines.map((line) => line.map((cell, i) => cell.padEnd(widths[i] ?? 0)).join('  ').trimEnd()).join('\n');
}

/** Every system's own figures, one line per level. */
export function systemsTable(systems: Iterable<SystemResult>): string {
  const lines = ['| System | In flight | rt/s | p50 / p99 ms | Round trips | CPU µs per round trip |', '| --- | --- | --- | --- | --- | --- |'];
  for (const system of systems) {
    if (system.error) lines.push(`| ${system.label} | | failed: ${system.error.split('\n')[0]} | | | |`);
    for (const level of system.levels) lines.push(`| ${system.label} | ${level.inFlight} | ${rate(level.perSecond)} | ${latency(level)} | ${level.roundTrips} | ${cpuCell(level)} |`);
  }
  return lines.join('\n');
}

/** Each process's CPU time per round trip and their sum, e.g. "server 310 + client 150 = 460". */
export function cpuCell(level: LoadResult): string {
  if (!level.cpu || level.cpu.length === 0) return '';
  const parts = level.cpu.map((entry) => `${entry.process} ${Math.round(entry.usPerRoundTrip)}`);
  const total = level.cpu.reduce((sum, entry) => sum + entry.usPerRoundTrip, 0);
  return level.cpu.length === 1 ? parts.join('') : `${parts.join(' + ')} = ${Math.round(total)}`;
}
