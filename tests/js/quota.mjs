// One generateContent call through the proxy with the official SDK; prints how the
// SDK surfaced the proxy's answer (tests/budgets/test_enforce.py expects a 429).
// usage: node quota.mjs BASE_URL API_KEY MODEL
import { GoogleGenAI } from "@google/genai";

const [baseUrl, apiKey, model] = process.argv.slice(2);
const ai = new GoogleGenAI({ apiKey, httpOptions: { baseUrl } });
try {
  const response = await ai.models.generateContent({ model, contents: "hi" });
  console.log(JSON.stringify({ name: "none", text: response.text }));
} catch (error) {
  console.log(
    JSON.stringify({ name: error.constructor.name, status: error.status, message: error.message }),
  );
}
