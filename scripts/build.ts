#!/usr/bin/env node
// Builds the package that `npm pack` makes (it runs this first): JavaScript
// and type declarations of src/ and gen/ in dist/, with what they read at run
// time beside them (the protos, the dashboard). Node runs TypeScript from a
// clone as it is, but not from inside node_modules, so an installed relgate
// runs this build.
//
//   node scripts/build.ts
import { execFile } from 'node:child_process';
import { cp, rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { PROJECT_DIR } from '../src/protos.ts';

const DIST = path.join(PROJECT_DIR, 'dist');
const TSC = path.join(PROJECT_DIR, 'node_modules', 'typescript', 'bin', 'tsc');

await rm(DIST, { recursive: true, force: true });
await promisify(execFile)(process.execPath, [TSC, '-p', path.join(PROJECT_DIR, 'scripts', 'tsconfig.build.json')]);
await cp(path.join(PROJECT_DIR, 'proto'), path.join(DIST, 'proto'), { recursive: true });
for (const file of ['index.html', 'app.js']) await cp(path.join(PROJECT_DIR, 'src', 'dashboard', file), path.join(DIST, 'src', 'dashboard', file));
console.log(`built ${path.relative(process.cwd(), DIST) || '.'}`);
