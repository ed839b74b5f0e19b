#!/usr/bin/env node
// Runs the compiled CLI (npm run build) when present, else the TypeScript source through tsx.
import { existsSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const compiled = path.join(root, 'dist', 'cli', 'main.js');
let mod;
if (existsSync(compiled)) {
  mod = await import(pathToFileURL(compiled).href);
} else {
  const { register } = await import('tsx/esm/api');
  register();
  mod = await import(pathToFileURL(path.join(root, 'src', 'cli', 'main.ts')).href);
}
const code = await mod.main(process.argv.slice(2));
if (process.argv[2] !== 'serve') process.exitCode = code;
