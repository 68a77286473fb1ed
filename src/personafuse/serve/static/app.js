// PersonaFuse web chat: plain JavaScript, no build step, no network beyond this server's /v1 API.
// Each reply shows the routing the server reports in its `persona` field: the trait activation
// (signed, O C E A N) and the ten expert gates (O+ .. N-).
"use strict";

const TRAITS = [
  ["O", "openness"], ["C", "conscientiousness"], ["E", "extraversion"], ["A", "agreeableness"], ["N", "neuroticism"],
];
const POLES = ["O+", "O-", "C+", "C-", "E+", "E-", "A+", "A-", "N+", "N-"];
const TRAIT_NAME = Object.fromEntries(TRAITS);

const state = { model: null, presets: [], history: [], busy: false };
const $ = (id) => document.getElementById(id);

class ApiError extends Error {}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") node.setAttribute("style", value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  let response;
  try {
    response = await fetch(path, body === undefined ? { headers } : { method: "POST", headers, body: JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(`cannot reach the server (${err.message})`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch (err) {
    data = null;
  }
  if (!response.ok) {
    const message = data && data.error && data.error.message ? data.error.message : `HTTP ${response.status}`;
    const hint = response.status === 401 ? " (enter the server's API key under Settings)" : "";
    throw new ApiError(`${response.status}: ${message}${hint}`);
  }
  if (data === null) throw new ApiError(`the server sent no JSON (HTTP ${response.status})`);
  return data;
}

// "A+=0.7, N-=0.3" -> {"A+": 0.7, "N-": 0.3}; pole names and the sum are checked by the server.
function parseMix(text) {
  const gates = {};
  const items = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (!items.length) throw new ApiError("the fixed mix is empty; write it as POLE=WEIGHT pairs, e.g. A+=0.7,N-=0.3");
  for (const item of items) {
    const [pole, weight, extra] = item.split("=").map((s) => s.trim());
    const value = Number(weight);
    if (!pole || weight === undefined || weight === "" || extra !== undefined || !Number.isFinite(value)) {
      throw new ApiError(`mix item "${item}" is not POLE=WEIGHT, e.g. A+=0.7`);
    }
    gates[pole] = value;
  }
  return gates;
}

function personaMode() {
  return document.querySelector('input[name="persona-mode"]:checked').value;
}

// The `persona` field of a request: undefined = automatic routing.
function personaField() {
  const mode = personaMode();
  if (mode === "off") return "off";
  if (mode === "mix") return parseMix($("mix").value);
  if (mode === "preset") {
    const name = $("preset").value;
    if (!name) throw new ApiError("choose a preset, or another persona mode");
    return name;
  }
  return undefined;
}

function requestBody(messages, persona) {
  const body = { model: state.model || "personafuse", messages };
  const maxTokens = $("max-tokens").value.trim();
  const temperature = $("temperature").value.trim();
  if (maxTokens) body.max_tokens = Number(maxTokens);
  if (temperature) body.temperature = Number(temperature);
  if (persona !== undefined) body.persona = persona;
  return body;
}

// ------------------------------------------------------------------------------------------------ rendering
function fmt(value, signed) {
  const text = Math.abs(value).toFixed(2);
  if (!signed) return text;
  return (value > 0 ? "+" : value < 0 ? "\u2212" : "\u00b1") + text;
}

function activationRow(trait, value) {
  const clamped = Math.max(-1, Math.min(1, value));
  const width = (Math.abs(clamped) * 50).toFixed(2);
  const left = clamped < 0 ? (50 - Number(width)).toFixed(2) : "50";
  const meter = el("span", {
    class: "track signed", role: "meter", "aria-valuemin": "-1", "aria-valuemax": "1",
    "aria-valuenow": String(value), "aria-valuetext": fmt(value, true),
    "aria-label": `${TRAIT_NAME[trait]} activation`,
  }, el("span", { class: "zero" }), el("span", {
    class: `fill trait-${trait} ${clamped < 0 ? "neg" : "pos"}`, style: `left:${left}%;width:${width}%`,
  }));
  return el("div", { class: "bar-row", "data-trait": trait, "data-value": String(value) },
    el("span", { class: "bar-label", title: TRAIT_NAME[trait], text: trait }), meter,
    el("span", { class: "bar-num", text: fmt(value, true) }));
}

function gateRow(pole, value) {
  const width = (Math.max(0, Math.min(1, value)) * 100).toFixed(2);
  const meter = el("span", {
    class: "track", role: "meter", "aria-valuemin": "0", "aria-valuemax": "1",
    "aria-valuenow": String(value), "aria-valuetext": fmt(value, false),
    "aria-label": `${pole} expert gate (${TRAIT_NAME[pole[0]]} ${pole[1] === "+" ? "high" : "low"})`,
  }, el("span", { class: `fill trait-${pole[0]} ${pole[1] === "+" ? "pos" : "neg"}`, style: `width:${width}%` }));
  return el("div", { class: "bar-row", "data-pole": pole, "data-value": String(value) },
    el("span", { class: "bar-label", text: pole }), meter, el("span", { class: "bar-num", text: fmt(value, false) }));
}

function sourceLabel(persona) {
  switch (persona.source) {
    case "auto": return "routed automatically";
    case "gates": return "fixed mix";
    case "activation": return "fixed activation";
    case "preset": return `preset ${persona.preset}`;
    case "off": return "experts off";
    default: return persona.source;
  }
}

function routingPanel(persona) {
  const panel = $("bars-template").content.firstElementChild.cloneNode(true);
  const activations = panel.querySelector(".activations");
  if (persona.activations) {
    for (const [trait] of TRAITS) activations.append(activationRow(trait, Number(persona.activations[trait] ?? 0)));
  } else {
    activations.append(el("p", { class: "note", text: "none: the request fixed the gates" }));
  }
  const gates = panel.querySelector(".gates");
  for (const pole of POLES) gates.append(gateRow(pole, Number(persona.gates[pole] ?? 0)));
  return panel;
}

function replyCard(kind, title) {
  const card = el("section", { class: `reply ${kind}`, "aria-label": title, "aria-busy": "true" },
    el("h3", { class: "reply-title", text: title }),
    el("p", { class: "pending", text: "thinking\u2026" }));
  return card;
}

function fillReply(card, data) {
  card.querySelector(".pending").remove();
  const text = data.choices && data.choices[0] ? data.choices[0].message.content : "";
  card.append(el("p", { class: "reply-text", text: text || "(empty reply)" }));
  if (data.persona) {
    card.querySelector(".reply-title").append(el("span", { class: "tag", text: sourceLabel(data.persona) }));
    if (data.persona.source !== "off") card.append(routingPanel(data.persona));
  }
  card.setAttribute("aria-busy", "false");
}

function failReply(card, message) {
  const pending = card.querySelector(".pending");
  if (pending) pending.remove();
  card.classList.add("failed");
  card.append(el("p", { class: "error", role: "alert", text: message }));
  card.setAttribute("aria-busy", "false");
}

function scrollDown() {
  const log = $("log");
  log.scrollTop = log.scrollHeight;
}

// ------------------------------------------------------------------------------------------------ actions
async function send(text) {
  if (state.busy) return;
  const hint = $("empty-hint");
  if (hint) hint.remove();
  const turn = el("article", { class: "turn" }, el("div", { class: "msg user" },
    el("span", { class: "visually-hidden", text: "You said: " }), el("p", { text })));
  const replies = el("div", { class: "replies" });
  turn.append(replies);
  $("log").append(turn);

  let persona;
  const routedCard = replyCard("routed", "PersonaFuse");
  replies.append(routedCard);
  try {
    persona = personaField();
  } catch (err) {
    failReply(routedCard, err.message);
    scrollDown();
    return;
  }
  const messages = [...state.history, { role: "user", content: text }];
  const compare = $("compare").checked && persona !== "off";
  let baseCard = null;
  if (compare) {
    replies.classList.add("compare");
    baseCard = replyCard("base", "Base model");
    replies.append(baseCard);
  }
  scrollDown();
  setBusy(true);
  const calls = [api("v1/chat/completions", requestBody(messages, persona))];
  if (compare) calls.push(api("v1/chat/completions", requestBody(messages, "off")));
  const [routed, base] = await Promise.allSettled(calls);
  if (routed.status === "fulfilled") {
    fillReply(routedCard, routed.value);
    const reply = routed.value.choices[0].message.content;
    state.history = [...messages, { role: "assistant", content: reply }];
  } else {
    failReply(routedCard, routed.reason.message);
  }
  if (baseCard) {
    if (base.status === "fulfilled") fillReply(baseCard, base.value);
    else failReply(baseCard, base.reason.message);
  }
  setBusy(false);
  scrollDown();
  return routed.status === "fulfilled";
}

function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy;
  $("composer").setAttribute("aria-busy", String(busy));
}

function syncPersonaControls() {
  const mode = personaMode();
  $("mix").disabled = mode !== "mix";
  $("preset").disabled = mode !== "preset";
  $("compare").disabled = mode === "off";
}

async function loadModels() {
  const status = $("model-status");
  try {
    const list = await api("v1/models");
    const cards = list.data || [];
    const main = cards.find((c) => !c.persona) || cards[0];
    state.model = main ? main.id : null;
    state.presets = cards.filter((c) => c.persona && c.persona.preset);
    const select = $("preset");
    select.replaceChildren();
    for (const card of state.presets) {
      select.append(el("option", { value: card.persona.preset, text: `${card.persona.preset}: ${card.persona.description}` }));
    }
    if (!state.presets.length) select.append(el("option", { value: "", text: "(no presets)" }));
    status.textContent = `model ${state.model}`;
    status.classList.remove("offline");
  } catch (err) {
    status.textContent = `API not reachable: ${err.message}`;
    status.classList.add("offline");
  }
}

function init() {
  const box = $("message");
  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = box.value.trim();
    if (!text || state.busy) return;
    box.value = "";
    await send(text);
    box.focus();
  });
  box.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.ctrlKey && !event.altKey && !event.metaKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  for (const radio of document.querySelectorAll('input[name="persona-mode"]')) {
    radio.addEventListener("change", syncPersonaControls);
  }
  $("clear").addEventListener("click", () => {
    state.history = [];
    $("log").replaceChildren(el("p", { class: "empty", id: "empty-hint", text: "New conversation." }));
    box.focus();
  });
  $("api-key").addEventListener("change", loadModels);
  syncPersonaControls();
  loadModels();
  box.focus();
}

document.addEventListener("DOMContentLoaded", init);
