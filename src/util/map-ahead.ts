/**
 * `fn` over `items` in order, with up to `ahead` calls running at once: while the caller handles one result the
 * next calls already run (a worker pool predicting the next images while this thread decodes and writes). Results
 * are yielded in the items' order. A call that fails throws when its turn comes; calls started after it still run
 * to completion, but nothing more is started once the caller stops iterating.
 */
export async function* mapAhead<T, R>(
  items: readonly T[],
  ahead: number,
  fn: (item: T, index: number) => Promise<R>,
): AsyncGenerator<R> {
  if (!(Number.isInteger(ahead) && ahead >= 1))
    throw new Error(`mapAhead: ahead must be an integer >= 1 (got ${ahead})`);
  const started: Promise<R>[] = [];
  const start = (i: number): void => {
    const p = fn(items[i], i);
    // Observed now so a failure that waits for its turn is not reported as unhandled; rethrown when awaited.
    p.catch(() => undefined);
    started.push(p);
  };
  for (let i = 0; i < items.length; i++) {
    while (started.length < Math.min(items.length, i + ahead)) start(started.length);
    yield await started[i];
  }
}
