/**
 * A terminal progress bar with ETA and live figures, plus a line logger that writes to a file.
 * The bar redraws in place on a TTY and prints a line every few percent otherwise (CI logs, files).
 */
import { appendFileSync, mkdirSync } from 'node:fs';
import path from 'node:path';

export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const r = s % 60;
  return h ? `${h}:${String(m).padStart(2, '0')}:${String(r).padStart(2, '0')}` : `${m}:${String(r).padStart(2, '0')}`;
}

export class ProgressBar {
  private readonly start = performance.now();
  private lastPrintedPercent = -1;
  private readonly tty: boolean;

  constructor(
    private readonly total: number,
    private readonly label: string,
    private readonly stream: NodeJS.WriteStream = process.stderr,
    private readonly startAt = 0,
    /** Wall-clock budget left for this run (seconds): progress and ETA follow it when it ends the run first. */
    private readonly budgetSeconds?: number,
  ) {
    this.tty = Boolean(stream.isTTY) && !process.env.CI;
  }

  update(done: number, figures: Record<string, number | string> = {}): void {
    const elapsed = (performance.now() - this.start) / 1000;
    const progressed = done - this.startAt;
    const rate = progressed > 0 ? progressed / elapsed : 0;
    const stepEta = rate > 0 ? (this.total - done) / rate : Number.NaN;
    const budgetLeft = this.budgetSeconds === undefined ? Infinity : Math.max(0, this.budgetSeconds - elapsed);
    const eta = Number.isNaN(stepEta)
      ? Number.isFinite(budgetLeft)
        ? budgetLeft
        : stepEta
      : Math.min(stepEta, budgetLeft);
    const timeFrac = this.budgetSeconds ? elapsed / this.budgetSeconds : 0;
    const frac = this.total > 0 ? Math.min(1, Math.max(done / this.total, timeFrac)) : 1;
    const width = 24;
    const filled = Math.round(frac * width);
    const figs = Object.entries(figures)
      .map(([k, v]) => `${k} ${typeof v === 'number' ? v.toFixed(4) : v}`)
      .join('  ');
    const line =
      `${this.label} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${this.total} ` +
      `${(frac * 100).toFixed(0)}%  ${formatDuration(elapsed)} elapsed, ETA ${formatDuration(eta)}  ${figs}`;
    if (this.tty) {
      this.stream.write(`\r${line.slice(0, (this.stream.columns || 160) - 1)}\x1b[K`);
    } else {
      const percent = Math.floor(frac * 20) * 5;
      if (percent !== this.lastPrintedPercent) {
        this.lastPrintedPercent = percent;
        this.stream.write(`${line}\n`);
      }
    }
  }

  finish(): void {
    if (this.tty) this.stream.write('\n');
  }
}

/** Appends timestamped lines (and optional JSON records) to a log file; echoes to stderr when asked. */
export class RunLog {
  constructor(
    readonly file: string,
    private readonly echo = false,
  ) {
    mkdirSync(path.dirname(file), { recursive: true });
  }

  info(message: string): void {
    const line = `${new Date().toISOString()} ${message}`;
    appendFileSync(this.file, `${line}\n`);
    if (this.echo) process.stderr.write(`${message}\n`);
  }

  /** One JSON object per line, for plots and tools. */
  record(event: string, data: Record<string, unknown>): void {
    appendFileSync(this.file.replace(/\.log$/, '.jsonl'), `${JSON.stringify({ time: Date.now(), event, ...data })}\n`);
  }
}
