// Cleanup registry shared by the test helpers.
//
// Every helper in this folder that starts something (a child process, an HTTP server, a browser, a
// temporary directory) registers an async closer here, so a test file can release everything with one
// call even when a test failed half-way:
//
//   import { after } from 'node:test';
//   import { cleanupAll } from './lib/cleanup.mjs';
//   after(cleanupAll);
//
// `register(name, closeFn)` returns an `unregister()` function (helpers call it from their own close()).
// `cleanupAll()` runs the remaining closers newest-first, never throws, and reports failures on stderr.
// As a last resort a synchronous `process.on('exit')` hook SIGKILLs every child process that is still
// tracked (`trackChild(child)`) so no server outlives the test process.

const closers = new Map();
let nextId = 1;
const children = new Set();

/** Registers an async closer; returns a function that unregisters it. */
export function register(name, closeFn) {
  const id = nextId++;
  closers.set(id, { name, closeFn });
  return () => closers.delete(id);
}

/** Runs every registered closer (newest first). Never throws. */
export async function cleanupAll() {
  const entries = [...closers.entries()].reverse();
  closers.clear();
  for (const [, { name, closeFn }] of entries) {
    try {
      await closeFn();
    } catch (err) {
      process.stderr.write(`cleanup of ${name} failed: ${err?.stack ?? err}\n`);
    }
  }
}

/** Tracks a child process so that it is SIGKILLed if the test process exits while it still runs. */
export function trackChild(child) {
  children.add(child);
  child.once('exit', () => children.delete(child));
}

process.on('exit', () => {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});
