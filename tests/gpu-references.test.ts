import { describe, expect, it } from 'vitest';
import { jsonLines, peerReference, runReference } from '../scripts/bench/gpu-references.js';

// gpu.ts runs its references (PyTorch, the peer) as child processes; these check the plumbing on
// any machine (the references themselves need the GPU machine).

describe('gpu.ts references', () => {
  it('keeps the JSON lines of a reference process and ignores its other output', () => {
    const out = runReference('node', process.execPath, ['-e', 'console.log(JSON.stringify({ kind: "info", T: 8 })); console.log("warming up"); console.log(JSON.stringify({ ms: 1.5 }))']);
    expect(jsonLines(out!)).toEqual([{ kind: 'info', T: 8 }, { ms: 1.5 }]);
  });

  it('says why a reference did not run, and gives no lines', () => {
    const logged: string[] = [];
    const log = console.log;
    console.log = (s: string) => logged.push(s);
    try {
      expect(runReference('failing', process.execPath, ['-e', 'console.error("no module named torch"); process.exit(3)'])).toBeUndefined();
      expect(peerReference([[8, 512]], { layers: 12, width: 768, heads: 12 }).size).toBe(0);
    } finally {
      console.log = log;
    }
    expect(logged[0]).toMatch(/reference failing: not run .*exit 3: no module named torch/);
    expect(logged[1]).toMatch(/reference peer: not run .*peer-gpu\.mjs.* missing/);
  });
});
