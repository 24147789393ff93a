// The Node `openai` SDK pointed at the embedded demo (`tollgate serve`), as a user would.
// Its embeddings ask for base64 by default: that is what found the mock's float-only answer.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import OpenAI from "openai";

const binary = process.env.TOLLGATE_BIN ?? new URL("../../target/debug/tollgate", import.meta.url).pathname;
let demo;
let gateway;

before(async () => {
  gateway = spawn(binary, ["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], {
    cwd: mkdtempSync(join(tmpdir(), "tollgate-node-")),
    stdio: ["ignore", "pipe", "ignore"],
  });
  const fields = {};
  for await (const line of createInterface({ input: gateway.stdout })) {
    for (const name of ["endpoint:", "key:", "openai:"]) {
      if (line.includes(name) && !(name in fields)) fields[name] = line.split(name)[1].trim().split(/\s+/)[0];
    }
    if (line.trim().startsWith("curl ")) break;
  }
  demo = { v1: fields["openai:"], key: fields["key:"], deployment: fields["endpoint:"].split("/").pop() };
});

after(() => gateway.kill("SIGTERM"));

const client = () => new OpenAI({ baseURL: demo.v1, apiKey: demo.key, maxRetries: 0 });

test("embeddings in the SDK's default encoding (base64) decode to the float answer", async () => {
  const encoded = await client().embeddings.create({ model: demo.deployment, input: ["a", "b"] });
  const floats = await client().embeddings.create({ model: demo.deployment, input: ["a", "b"], encoding_format: "float" });
  assert.equal(encoded.data.length, 2);
  assert.equal(encoded.data[0].embedding.length, 16);
  assert.ok(encoded.data[0].embedding.some((v) => Math.abs(v) > 0.01), "not all zeros");
  encoded.data[0].embedding.forEach((v, i) => assert.ok(Math.abs(v - floats.data[0].embedding[i]) < 1e-6));
});

test("models.list names the deployment the key may call", async () => {
  const ids = [];
  for await (const model of client().models.list()) ids.push(model.id);
  assert.deepEqual(ids, [demo.deployment]);
});

test("chat, streamed with include_usage, and tool calls", async () => {
  const messages = [{ role: "user", content: "Hello!" }];
  const answer = await client().chat.completions.create({ model: demo.deployment, messages, n: 2, max_tokens: 3 });
  assert.deepEqual(answer.choices.map((c) => c.index), [0, 1]);
  assert.equal(answer.usage.completion_tokens, 6);
  let text = "";
  let usage;
  const stream = await client().chat.completions.create({
    model: demo.deployment, messages, stream: true, stream_options: { include_usage: true },
  });
  for await (const chunk of stream) {
    text += chunk.choices[0]?.delta?.content ?? "";
    if (chunk.usage) usage = chunk.usage;
  }
  assert.ok(text.startsWith("Hello"));
  assert.ok(usage && usage.completion_tokens === 16, JSON.stringify(usage));
  const tools = [{ type: "function", function: { name: "get_weather", parameters: {
    type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];
  const called = await client().chat.completions.create({ model: demo.deployment, messages, tools });
  assert.equal(called.choices[0].finish_reason, "tool_calls");
  assert.equal(called.choices[0].message.tool_calls[0].function.arguments, '{"city":"mock"}');
});

test("a wrong key is an AuthenticationError", async () => {
  const bad = new OpenAI({ baseURL: demo.v1, apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(bad.models.list(), OpenAI.AuthenticationError);
});
