import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    // libtorch owns its own thread pools: one process per test file keeps them isolated.
    pool: 'forks',
    poolOptions: { forks: { maxForks: 2, minForks: 1 } },
    // Two test processes on two cores: one libtorch thread each avoids OpenMP oversubscription.
    env: { ANOSEG_THREADS: '1' },
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
