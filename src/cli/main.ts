#!/usr/bin/env node
/**
 * The `anoseg` command line. Each command (./commands/) is a thin layer over the library API (src/index.ts); its
 * options are defined once (./options.ts), and its usage text is generated from the same definitions it parses.
 */
import { COMMANDS } from './commands/index.js';
import { HelpRequested, UsageError } from './options.js';

export { trainConfigFromArgs } from './commands/train.js';
export { detectorConfigFromArgs } from './commands/train-detector.js';

const NAME_WIDTH = Math.max(...COMMANDS.map((c) => c.spec.name.length)) + 1;

export const HELP = `anoseg — anomaly segmentation trained on defect-free images (AnoSeg, PaDiM) on libtorch

Usage: anoseg <command> [options]

Commands:
${COMMANDS.map((c) => `  ${c.spec.name.padEnd(NAME_WIDTH)}${c.spec.summary}`).join('\n')}

Run 'anoseg <command> --help' for the options of a command.`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(`${HELP}\n`);
    return command ? 0 : 1;
  }
  const cmd = COMMANDS.find((c) => c.spec.name === command);
  if (!cmd) {
    process.stderr.write(`unknown command '${command}'\n\n${HELP}\n`);
    return 2;
  }
  try {
    await cmd.run(rest);
    return 0;
  } catch (e) {
    if (e instanceof HelpRequested) {
      process.stdout.write(`${e.message}\n`);
      return 0;
    }
    if (e instanceof UsageError) {
      process.stderr.write(`anoseg ${command}: ${e.message}\n`);
      return 2;
    }
    process.stderr.write(`anoseg ${command}: error: ${(e as Error).message}\n`);
    if (process.env.ANOSEG_DEBUG) process.stderr.write(`${(e as Error).stack}\n`);
    return 1;
  }
}

const invokedDirectly = process.argv[1] && /cli[\\/]main\.[jt]s$/.test(process.argv[1]);
if (invokedDirectly) {
  main(process.argv.slice(2)).then(
    (code) => {
      if (code !== 0 || !process.argv.includes('serve')) process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`${String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
