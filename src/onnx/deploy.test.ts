import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

/** Modules a file loads at run time: static imports and re-exports, not `import type`. */
function runtimeImports(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/^(?:import|export)\s+(?!type\b)[^;]*?from\s+'([^']+)'/gms)].map((m) => m[1]);
  return specs.filter((s) => s.startsWith('.')).map((s) => path.resolve(path.dirname(file), s.replace(/\.js$/, '.ts')));
}

/** Source files (relative to src/) reachable from `entry` through run-time imports. */
function reachable(entry: string): string[] {
  const seen = new Set<string>([path.resolve(entry)]);
  const queue = [...seen];
  while (queue.length) {
    for (const dep of runtimeImports(queue.pop()!)) {
      if (seen.has(dep)) continue;
      seen.add(dep);
      queue.push(dep);
    }
  }
  return [...seen].map((f) => path.relative(path.resolve('src'), f));
}

const libtorch = (files: string[]): string[] => files.filter((f) => /^(engine|nn)\//.test(f));

describe("the 'anoseg-ts/onnx' entry point (OnnxPredictor)", () => {
  it('loads no libtorch module: a deployment runs the exported model without the native addon', () => {
    const reached = reachable('src/onnx/predictor.ts');
    expect(reached).toContain('models/fitted-prediction.ts');
    expect(libtorch(reached)).toEqual([]);
    // the walk does see the engine where it is imported (the exporter reads weights from libtorch)
    expect(libtorch(reachable('src/onnx/export.ts'))).toContain('engine/index.ts');
  });
});
