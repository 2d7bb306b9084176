// Summarises V8 CPU profiles (from `npm run bench -- --cpu-prof`): where the
// busy time goes by part of the stack (bench/lib/profile-parts.ts), and the
// self time by file and by function. --from and --to (seconds after the
// profile's start) keep one stretch of it, such as the last level of a run.
//
//   node bench/profile.ts [--from S] [--to S] bench/results/profiles/CPU.*.cpuprofile
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { busyByPart, type CpuProfile } from './lib/profile-parts.ts';

const TOP = 25;

const { values: window, positionals: files } = parseArgs({
  options: { from: { type: 'string', default: '0' }, to: { type: 'string', default: 'Infinity' } },
  allowPositionals: true,
});
const fromS = Number(window.from);
const toS = Number(window.to);

function summarize(file: string): string {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<number, number>();
  let clockUs = 0;
  profile.samples.forEach((id, i) => {
    clockUs += profile.timeDeltas[i] ?? 0;
    if (clockUs >= fromS * 1e6 && clockUs < toS * 1e6) selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0));
  });
  const total = [...selfUs.values()].reduce((a, b) => a + b, 0);
  const byFunction = new Map<string, number>();
  const byFile = new Map<string, number>();
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)?.callFrame;
    if (!frame) continue;
    const where = frame.url ? shorten(frame.url) : '(native)';
    const name = `${frame.functionName || '(anonymous)'} ${where}:${frame.lineNumber + 1}`;
    byFunction.set(name, (byFunction.get(name) ?? 0) + us);
    byFile.set(where, (byFile.get(where) ?? 0) + us);
  }
  const { busyUs, parts } = busyByPart(profile, fromS, toS);
  const lines = [`${file}: ${(total / 1e6).toFixed(2)} s sampled, ${(busyUs / 1e6).toFixed(2)} s busy`];
  const top = (map: Map<string, number>, title: string, of: number) => {
    lines.push(`  ${title}`);
    for (const [name, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, TOP)) lines.push(`    ${((100 * us) / of).toFixed(1).padStart(5)}%  ${name}`);
  };
  top(parts, 'busy time by part (innermost part on the stack)', busyUs);
  top(byFile, 'self time by file', total);
  top(byFunction, 'self time by function', total);
  return lines.join('\n');
}

/** node_modules/pkg/... or the path inside the project. */
function shorten(url: string): string {
  const file = url.replace(/^file:\/\//, '');
  const modules = file.lastIndexOf('node_modules/');
  if (modules >= 0) return file.slice(modules + 'node_modules/'.length);
  return path.relative(process.cwd(), file) || file;
}

for (const file of files) process.stdout.write(`${summarize(file)}\n\n`);
