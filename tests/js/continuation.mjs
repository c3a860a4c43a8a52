// Drives the official @google/genai SDK through the proxy: an interaction that
// takes three hops (requires_continuation twice), once unary and once
// streamed, each continued automatically by the SDK.
//
// Usage: node continuation.mjs BASE_URL API_KEY MODEL PROMPT
// Prints one JSON object: for each mode, the hop ids and the usage the SDK
// reports (the unary one is the SDK's merge of the hops).
import { GoogleGenAI } from "@google/genai";

const [baseUrl, apiKey, model, prompt] = process.argv.slice(2);
const ai = new GoogleGenAI({
  apiKey,
  httpOptions: { baseUrl, headers: { "x-emulator-continuations": "2" } },
});

const merged = await ai.interactions.create({ model, input: prompt });

const completed = [];
const stream = await ai.interactions.create({ model, input: prompt, stream: true });
for await (const event of stream) {
  if (event.event_type === "interaction.completed") {
    completed.push(event.interaction);
  }
}

console.log(
  JSON.stringify({
    unary: {
      status: merged.status,
      ids: merged.continuation_ids,
      usage: merged.usage,
      text: merged.output_text,
    },
    streamed: {
      ids: completed.map((hop) => hop.id),
      statuses: completed.map((hop) => hop.status),
      usages: completed.map((hop) => hop.usage),
    },
  }),
);
