// Copies the client from the server's package into this one: realtime/static/realtime.js
// (the one source, served by every realtime server) -> realtime.js, and the
// repository's LICENSE -> LICENSE. Run by `npm pack` and `npm publish` (prepack), `npm
// test` (pretest) and `npm run sync`; the copies are not committed. (Not `prepare`: that
// is an install script, which users installing the package would be asked to allow.)
//
//   node scripts/sync.mjs                   copy what changed (nothing to copy from: keep the copies)
//   node scripts/sync.mjs --require-source  the same, but fail outside the repository (prepack)
import { existsSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const pkg = join(dirname(fileURLToPath(import.meta.url)), "..");
const repo = join(pkg, "..", "..");
const COPIES = [
  [join(repo, "realtime", "static", "realtime.js"), join(pkg, "realtime.js")],
  [join(repo, "LICENSE"), join(pkg, "LICENSE")],
];
const requireSource = process.argv.includes("--require-source");

let failed = false;
for (const [source, target] of COPIES) {
  const name = relative(pkg, target);
  if (!existsSync(source)) {
    if (requireSource || !existsSync(target)) {
      console.error(`sync: ${relative(pkg, source)} not found: run this in a checkout of realtime`);
      failed = true;
    }
    continue;
  }
  const data = readFileSync(source);
  if (existsSync(target) && readFileSync(target).equals(data)) continue;
  writeFileSync(`${target}.tmp`, data);
  renameSync(`${target}.tmp`, target);
  console.log(`sync: ${name} <- ${relative(pkg, source)}`);
}
process.exit(failed ? 1 : 0);
