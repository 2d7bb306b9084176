// Summarises V8 CPU profiles (from `npm run bench -- --cpu-prof`): where the
// self time goes, by function and by file.
//
//   node bench/profile.ts bench/results/profiles/CPU.*.cpuprofile
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface Profile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

const TOP = 25;

function summarize(file: string): string {
  const profile = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(profile.nodes.map((node) => [node.id, node]));
  const selfUs = new Map<number, number>();
  profile.samples.forEach((id, i) => selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i] ?? 0)));
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
  const lines = [`${file}: ${(total / 1e6).toFixed(2)} s sampled`];
  const top = (map: Map<string, number>, title: string) => {
    lines.push(`  ${title}`);
    for (const [name, us] of [...map].sort((a, b) => b[1] - a[1]).slice(0, TOP)) lines.push(`    ${((100 * us) / total).toFixed(1).padStart(5)}%  ${name}`);
  };
  top(byFile, 'self time by file');
  top(byFunction, 'self time by function');
  return lines.join('\n');
}

/** node_modules/pkg/... or the path inside the project. */
function shorten(url: string): string {
  const file = url.replace(/^file:\/\//, '');
  const modules = file.lastIndexOf('node_modules/');
  if (modules >= 0) return file.slice(modules + 'node_modules/'.length);
  return path.relative(process.cwd(), file) || file;
}

for (const file of process.argv.slice(2)) process.stdout.write(`${summarize(file)}\n\n`);
