import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

/** Distinguishes the temporary files of writes that start in the same process in the same millisecond. */
let writeCounter = 0;

/**
 * Write a file atomically: data goes to a temporary sibling, is flushed, then renamed over the target,
 * so a crash or kill never leaves a half-written checkpoint or output behind. A failed write removes its
 * temporary file; concurrent writes to one target each use their own temporary file (the last rename wins).
 */
export async function writeFileAtomic(target: string, data: string | Uint8Array): Promise<void> {
  const dir = path.dirname(target);
  await fs.mkdir(dir, { recursive: true });
  const unique = `${process.pid}.${Date.now()}.${++writeCounter}.${randomBytes(4).toString('hex')}`;
  const tmp = path.join(dir, `.${path.basename(target)}.${unique}.tmp`);
  const handle = await fs.open(tmp, 'wx');
  try {
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.rename(tmp, target);
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}
