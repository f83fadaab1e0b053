// Validate a glTF/GLB file with the Khronos glTF validator (npm package gltf-validator); prints a JSON summary.
//   npm install --prefix .cache/gltf gltf-validator && NODE_PATH=.cache/gltf/node_modules node tools/gltf/validate.js file.glb
const validator = require('gltf-validator');
const fs = require('fs');
const path = process.argv[2];
validator.validateBytes(new Uint8Array(fs.readFileSync(path)))
  .then((report) => { console.log(JSON.stringify({numErrors: report.issues.numErrors, numWarnings: report.issues.numWarnings, messages: report.issues.messages.slice(0, 10)})); })
  .catch((error) => { console.error('validation failed:', error); process.exit(2); });
