/** `anoseg launch`: N local processes of a command as one data-parallel group. */
import { LAUNCH, launchLocal, resolveLaunch } from '../distributed.js';
import type { Command } from '../options.js';

async function run(args: string[]): Promise<void> {
  const code = await launchLocal(resolveLaunch(args));
  if (code !== 0) throw new Error(`a process of the group failed (status ${code})`);
}

export const launchCommand: Command = { spec: LAUNCH, run };
