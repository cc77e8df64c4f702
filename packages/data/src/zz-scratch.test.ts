import { it } from 'vitest';
import { prepareBrown } from './brown.js';
it('scratch', async () => {
  const t = Date.now();
  console.log(await prepareBrown('/tmp/brown-out'), Date.now() - t, 'ms');
  const t2 = Date.now();
  console.log(await prepareBrown('/tmp/brown-out'), Date.now() - t2, 'ms');
});
