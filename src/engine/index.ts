export * from './tensor.js';
export * as F from './functional.js';
export { profile } from './profiler.js';
export * as foreach from './foreach.js';
export * from './distributed.js';
