// Produces reference.json: exact Llama 3 prompt token counts for bodies.json, with the Llama 3
// instruct chat template applied as the model bills it. Run once, offline, when bodies change:
//   npm install --no-save llama3-tokenizer-js@1.2.0 && node make_reference.mjs
import { readFileSync, writeFileSync } from "node:fs";
import llama3Tokenizer from "llama3-tokenizer-js";

const TOOLS_PREAMBLE =
  "Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\n" +
  'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n';

function text(content) {
  if (content == null) return "";
  if (typeof content === "string") return content;
  return content.filter((p) => p.type === "text").map((p) => p.text).join("");
}

// Llama 3.1 instruct template (tools in the first user message, tool results as "ipython").
function render(body) {
  let out = "<|begin_of_text|>";
  let toolsPending = Array.isArray(body.tools) && body.tools.length > 0;
  for (const m of body.messages) {
    let role = m.role === "tool" ? "ipython" : m.role;
    let content = text(m.content).trim();
    if (m.role === "user" && toolsPending) {
      content = TOOLS_PREAMBLE + body.tools.map((t) => JSON.stringify(t, null, 4)).join("\n\n") + "\n\n" + content;
      toolsPending = false;
    }
    if (m.role === "assistant" && Array.isArray(m.tool_calls)) {
      content = m.tool_calls
        .map((c) => JSON.stringify({ name: c.function.name, parameters: JSON.parse(c.function.arguments) }))
        .join("");
    }
    out += `<|start_header_id|>${role}<|end_header_id|>\n\n${content}<|eot_id|>`;
  }
  return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
}

const bodies = JSON.parse(readFileSync(new URL("./bodies.json", import.meta.url), "utf8"));
const reference = bodies.map(({ name, body }) => ({
  name,
  llama3_prompt_tokens: llama3Tokenizer.encode(render(body), { bos: false, eos: false }).length,
}));
writeFileSync(new URL("./reference.json", import.meta.url), JSON.stringify(reference, null, 1) + "\n");
console.log(`${reference.length} reference counts written`);
