// eslint for the HTML report's script, which runs in a browser with no modules or build
// step: it is inlined as a classic <script> into a page that loads nothing else.
import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["**/node_modules/", ".venv*/", "build/", "dist/"] },
  js.configs.recommended,
  {
    files: ["src/resnext_cli/**/*.js"],
    languageOptions: {
      ecmaVersion: 2020,
      sourceType: "script",
      globals: { ...globals.browser },
    },
    linterOptions: { reportUnusedDisableDirectives: "error" },
    rules: {
      "no-implicit-globals": "error",
      "no-var": "error",
      "prefer-const": "error",
      eqeqeq: "error",
      strict: ["error", "global"],
      "no-restricted-properties": [
        "error",
        { property: "innerHTML", message: "build nodes and set textContent instead" },
        { property: "outerHTML", message: "build nodes and set textContent instead" },
        { property: "insertAdjacentHTML", message: "build nodes and set textContent instead" },
      ],
      "no-restricted-syntax": [
        "error",
        {
          selector: "CallExpression[callee.property.name='setAttribute'][arguments.0.value=/^(on|style$)/]",
          message: "event handlers and style attributes break the report's CSP",
        },
      ],
      "no-eval": "error",
      "no-implied-eval": "error",
      "no-new-func": "error",
    },
  },
];
