import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { ProgressBar } from './progress.js';

function capture(): { stream: NodeJS.WriteStream; lines: string[] } {
  const lines: string[] = [];
  const w = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(String(chunk));
      cb();
    },
  });
  return { stream: w as unknown as NodeJS.WriteStream, lines };
}

describe('ProgressBar', () => {
  it('without a budget, the ETA follows the steps', async () => {
    const { stream, lines } = capture();
    const bar = new ProgressBar(1000, 'train', stream);
    await new Promise((r) => setTimeout(r, 50));
    bar.update(500);
    // 500 steps in ~0.05 s: the other 500 take well under a minute
    expect(lines.at(-1)).toMatch(/500\/1000 50% .* ETA 0:0\d/);
  });

  it('with a time budget that ends the run first, progress and ETA follow the budget', async () => {
    const { stream, lines } = capture();
    const bar = new ProgressBar(1_000_000, 'train', stream, 0, 3000);
    await new Promise((r) => setTimeout(r, 50));
    bar.update(10);
    // 10 of a million steps in 0.05 s would take ~80 minutes; the 50-minute budget ends it first
    expect(lines.at(-1)).toMatch(/ETA (49:5\d|50:00) /);
    expect(lines.at(-1)).toMatch(/ 0% /);
  });
});
