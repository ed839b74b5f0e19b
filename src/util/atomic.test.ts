import { spawn } from 'node:child_process';
import { existsSync, promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { writeFileAtomic } from './atomic.js';

let tmp: string;
beforeAll(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'anoseg-atomic-'));
});
afterAll(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});
afterEach(() => {
  vi.restoreAllMocks();
});

/** A fresh folder per test, so listings show exactly what one write left behind. */
async function dir(name: string): Promise<string> {
  const d = path.join(tmp, name);
  await fs.mkdir(d, { recursive: true });
  return d;
}

/** The temporary siblings writeFileAtomic makes for `target`: `.<name>.<...>.tmp`. */
async function tempSiblings(target: string): Promise<string[]> {
  const base = path.basename(target);
  return (await fs.readdir(path.dirname(target))).filter((f) => f.startsWith(`.${base}.`) && f.endsWith('.tmp'));
}

/**
 * Makes the next fs.open (the one writeFileAtomic uses for its temporary file) return a handle whose writeFile
 * writes the first `fraction` of the data for real and then fails like a full disk.
 */
function failWritePartWay(fraction: number): void {
  const realOpen = fs.open.bind(fs);
  vi.spyOn(fs, 'open').mockImplementationOnce(async (...args: Parameters<typeof fs.open>) => {
    const handle = await realOpen(...args);
    const realWriteFile = handle.writeFile.bind(handle);
    handle.writeFile = async (d: Parameters<typeof handle.writeFile>[0]): Promise<void> => {
      const bytes = typeof d === 'string' ? Buffer.from(d) : (d as Uint8Array);
      await realWriteFile(bytes.subarray(0, Math.floor(bytes.length * fraction)));
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    };
    return handle;
  });
}

describe('writeFileAtomic', () => {
  it('creates a file, and its parent folders, with exactly the given bytes or text', async () => {
    const d = await dir('create');
    const target = path.join(d, 'a', 'b', 'out.bin');
    const bytes = Uint8Array.from({ length: 1000 }, (_, i) => (i * 7) % 256);
    await writeFileAtomic(target, bytes);
    expect(Buffer.compare(await fs.readFile(target), Buffer.from(bytes))).toBe(0);
    await writeFileAtomic(path.join(d, 'text.txt'), 'héllo\n');
    expect(await fs.readFile(path.join(d, 'text.txt'), 'utf8')).toBe('héllo\n');
    // an empty payload is a valid (empty) file
    await writeFileAtomic(path.join(d, 'empty'), new Uint8Array(0));
    expect((await fs.stat(path.join(d, 'empty'))).size).toBe(0);
    expect((await fs.readdir(path.join(d, 'a', 'b'))).sort()).toEqual(['out.bin']);
  });

  it('replaces an existing file by renaming a new inode over it: an open reader keeps the old contents', async () => {
    const d = await dir('replace');
    const target = path.join(d, 'model.safetensors');
    const oldBytes = Buffer.alloc(64 * 1024, 1);
    await fs.writeFile(target, oldBytes);
    const inodeBefore = (await fs.stat(target)).ino;
    // A reader that opened the file before the replacement (a predictor loading the model) must see the old
    // file in full: an in-place rewrite (truncate + write) would show it the new or a mixed file instead.
    const reader = await fs.open(target, 'r');
    try {
      const newBytes = Buffer.alloc(128 * 1024, 2);
      await writeFileAtomic(target, newBytes);
      expect((await fs.stat(target)).ino).not.toBe(inodeBefore);
      expect(Buffer.compare(await fs.readFile(target), newBytes)).toBe(0);
      const seen = Buffer.alloc(oldBytes.length + 16);
      const { bytesRead } = await reader.read(seen, 0, seen.length, 0);
      expect(bytesRead).toBe(oldBytes.length);
      expect(Buffer.compare(seen.subarray(0, bytesRead), oldBytes)).toBe(0);
    } finally {
      await reader.close();
    }
    expect(await fs.readdir(d)).toEqual(['model.safetensors']);
  });

  it('a write failing part-way keeps the old file intact and removes its partial temporary file', async () => {
    const d = await dir('fail-midway');
    const target = path.join(d, 'checkpoint.safetensors');
    const oldBytes = Buffer.alloc(4096, 7);
    await fs.writeFile(target, oldBytes);
    failWritePartWay(0.5);
    await expect(writeFileAtomic(target, Buffer.alloc(1 << 20, 9))).rejects.toThrow(/ENOSPC/);
    expect(Buffer.compare(await fs.readFile(target), oldBytes)).toBe(0);
    expect(await fs.readdir(d)).toEqual(['checkpoint.safetensors']);

    // no previous file: nothing at the target afterwards, no partial file, no leftovers
    const fresh = path.join(d, 'new.json');
    failWritePartWay(0.3);
    await expect(writeFileAtomic(fresh, '{"x": 1}'.repeat(1000))).rejects.toThrow(/ENOSPC/);
    expect(existsSync(fresh)).toBe(false);
    expect(await fs.readdir(d)).toEqual(['checkpoint.safetensors']);

    // the next write succeeds normally
    await writeFileAtomic(target, Buffer.from('new'));
    expect(await fs.readFile(target, 'utf8')).toBe('new');
  });

  it('a process killed in the middle of writing a large file leaves the old file intact', async () => {
    const d = await dir('killed');
    const target = path.join(d, 'model.safetensors');
    const oldBytes = Buffer.from('the previous model\n');
    await fs.writeFile(target, oldBytes);
    const size = 32 * 1024 * 1024;
    const script = fileURLToPath(new URL('../../test/fixtures/atomic-writer.ts', import.meta.url));
    const child = spawn(process.execPath, ['--import', 'tsx', script, target, String(size)], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<NodeJS.Signals | number | null>((resolve) =>
      child.on('exit', (code, signal) => resolve(signal ?? code)),
    );
    await new Promise<void>((resolve, reject) => {
      child.stdout.on('data', (c: Buffer) => {
        stdout += c.toString();
        if (stdout.includes('half\n')) resolve();
      });
      void exited.then((how) => reject(new Error(`writer exited (${how}) before the kill: ${stdout}${stderr}`)));
    });
    // the child is now in the middle of the write: half of the new file sits in the temporary sibling
    const temps = await tempSiblings(target);
    expect(temps).toHaveLength(1);
    expect((await fs.stat(path.join(d, temps[0]))).size).toBe(size / 2);
    expect(Buffer.compare(await fs.readFile(target), oldBytes)).toBe(0);

    child.kill('SIGKILL');
    expect(await exited).toBe('SIGKILL');
    expect(stdout).not.toContain('finished');
    // the target is the old file, whole; only the hidden temporary sibling (never a partial target) remains
    expect(Buffer.compare(await fs.readFile(target), oldBytes)).toBe(0);
    expect((await fs.readdir(d)).sort()).toEqual([temps[0], 'model.safetensors'].sort());
    // a stale temporary file from a killed writer does not get in the way of the next write
    await writeFileAtomic(target, Buffer.from('the next model\n'));
    expect(await fs.readFile(target, 'utf8')).toBe('the next model\n');
  }, 60_000);

  it('concurrent writes to one target each land whole: the target ends as one of the payloads', async () => {
    const d = await dir('concurrent');
    const target = path.join(d, 'out.bin');
    // same process, same millisecond: the temporary names must still differ
    const payloads = Array.from({ length: 6 }, (_, i) => Buffer.alloc(256 * 1024 + i, i + 1));
    await Promise.all(payloads.map((p) => writeFileAtomic(target, p)));
    const final = await fs.readFile(target);
    expect(payloads.some((p) => Buffer.compare(final, p) === 0)).toBe(true);
    expect(await fs.readdir(d)).toEqual(['out.bin']);
  });

  it('errors: a folder at the target, or a file where a parent folder should be; nothing is left behind', async () => {
    const d = await dir('errors');
    const asDir = path.join(d, 'taken');
    await fs.mkdir(asDir);
    await fs.writeFile(path.join(asDir, 'inside.txt'), 'keep');
    await expect(writeFileAtomic(asDir, 'x')).rejects.toThrow(/EISDIR|ENOTEMPTY|EEXIST/);
    expect(await fs.readFile(path.join(asDir, 'inside.txt'), 'utf8')).toBe('keep');
    expect((await fs.readdir(d)).sort()).toEqual(['taken']);

    const file = path.join(d, 'plain.txt');
    await fs.writeFile(file, 'plain');
    await expect(writeFileAtomic(path.join(file, 'child.txt'), 'x')).rejects.toThrow(/ENOTDIR|EEXIST/);
    expect(await fs.readFile(file, 'utf8')).toBe('plain');
    expect((await fs.readdir(d)).sort()).toEqual(['plain.txt', 'taken']);
  });
});
