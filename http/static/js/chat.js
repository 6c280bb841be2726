// Chat: the conversation list (newest activity first, search, filters, more on scroll),
// a new conversation with a choice of agent, and a transcript that opens on the newest
// messages, loads older ones on scroll up and follows the conversation's events live.
import { api, followEvents, query } from "/console/js/api.js";
import { clear, debounce, errorBox, field, formatTime, h, pretty } from "/console/js/dom.js";
import { renderMarkdown } from "/console/js/markdown.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const LIST_PAGE = 25;
const MESSAGE_PAGE = 30;

export function renderChat(main, { params, showBanner }) {
  const conversationId = params[0] || null;
  if (params[0] && !UUID.test(params[0])) {
    main.append(h("section", { class: "panel notfound" }, h("h1", {}, "404: no such conversation"),
      h("p", {}, "That is not a conversation id.")));
    return null;
  }
  const layout = h("div", { class: "chat" });
  const side = h("aside", { class: "conversations", "aria-label": "Conversations" });
  const pane = h("section", { class: "transcript-pane", "aria-label": "Transcript" });
  layout.append(side, pane);
  main.append(layout);
  const stops = [];
  stops.push(renderList(side, conversationId));
  if (conversationId) {
    layout.classList.add("has-open");
    stops.push(renderConversation(pane, conversationId, showBanner));
  } else {
    pane.append(h("div", { class: "empty" }, h("p", {}, "Pick a conversation or start a new one.")));
  }
  return () => stops.forEach((stop) => stop && stop());
}

// ---- the list ---------------------------------------------------------------------

function renderList(side, openId) {
  const search = h("input", { type: "search", name: "q", placeholder: "Title contains…" });
  const agentFilter = h("select", { name: "agent" }, h("option", { value: "" }, "Any agent"));
  const statusFilter = h("select", { name: "status" },
    h("option", { value: "" }, "Any status"),
    h("option", { value: "idle" }, "idle"),
    h("option", { value: "running" }, "running"),
    h("option", { value: "failed" }, "failed"));
  const newAgent = h("select", { name: "new-agent" });
  const newTitle = h("input", { name: "title", placeholder: "New conversation" });
  const newPolicy = h("select", { name: "busy-policy" },
    h("option", { value: "reject" }, "refuse (409)"),
    h("option", { value: "enqueue" }, "queue it"),
    h("option", { value: "interrupt" }, "interrupt the run"));
  const createStatus = h("div", { role: "status", "aria-live": "polite" });
  const create = h("form", { class: "new-conversation stack", "aria-label": "New conversation" },
    field("Title", newTitle),
    field("Agent", newAgent),
    field("A message during a run", newPolicy),
    h("button", { type: "submit" }, "New conversation"),
    createStatus);
  const items = h("ul", { class: "conversation-list", "aria-label": "Your conversations" });
  const more = h("div", { class: "more", role: "status" });
  side.append(
    create,
    h("div", { class: "filters stack" }, field("Search titles", search), field("Agent", agentFilter),
      field("Status", statusFilter)),
    items,
    more,
  );

  let cursor = null;
  let loading = false;
  let exhausted = false;
  let generation = 0;

  async function loadPage(reset) {
    if (reset) {
      generation += 1;
      cursor = null;
      exhausted = false;
      clear(items);
    }
    if (loading || exhausted) return;
    loading = true;
    const mine = generation;
    more.textContent = "Loading…";
    try {
      const page = await api(`/v1/conversations${query({
        limit: LIST_PAGE, cursor, q: search.value.trim(), agent: agentFilter.value, status: statusFilter.value,
      })}`);
      if (mine !== generation) return;
      for (const c of page.items) items.append(listItem(c, openId));
      cursor = page.next;
      exhausted = !page.next;
      more.textContent = exhausted ? (items.children.length ? "" : "No conversations.") : "";
    } catch (error) {
      more.replaceChildren(errorBox(error));
    } finally {
      loading = false;
    }
    if (!exhausted && side.scrollHeight <= side.clientHeight + 10) loadPage(false);
  }

  side.addEventListener("scroll", () => {
    if (side.scrollTop + side.clientHeight >= side.scrollHeight - 80) loadPage(false);
  });
  const reload = debounce(() => loadPage(true), 250);
  search.addEventListener("input", reload);
  agentFilter.addEventListener("change", () => loadPage(true));
  statusFilter.addEventListener("change", () => loadPage(true));

  api("/v1/agents?limit=100").then((agents) => {
    for (const agent of agents.items) {
      // `reference`: what a conversation records as its agent (a server agent's name, else its id).
      agentFilter.append(h("option", { value: agent.reference }, agent.name));
      newAgent.append(h("option", { value: agent.reference }, `${agent.name}: ${agent.description || agent.model}`));
    }
  }).catch((error) => createStatus.replaceChildren(errorBox(error)));

  create.addEventListener("submit", async (event) => {
    event.preventDefault();
    createStatus.textContent = "Creating…";
    try {
      const body = { busy_policy: newPolicy.value };
      if (newAgent.value) body.agent = newAgent.value;
      if (newTitle.value.trim()) body.title = newTitle.value.trim();
      const created = await api("/v1/conversations", { method: "POST", body });
      location.hash = `#/chat/${created.id}`;
    } catch (error) {
      createStatus.replaceChildren(errorBox(error));
    }
  });

  loadPage(true);
  return () => { generation += 1; };
}

function listItem(c, openId) {
  return h("li", { class: c.id === openId ? "current" : "" },
    h("a", { href: `#/chat/${c.id}`, "aria-current": c.id === openId ? "page" : null },
      h("span", { class: "title" }, c.title || "(untitled)"),
      h("span", { class: `pill ${c.run_status}` }, c.run_status),
      h("span", { class: "meta" }, `${c.agent} · ${c.message_count} messages · ${formatTime(c.last_activity_at)}`)));
}

// ---- one conversation ---------------------------------------------------------------

function renderConversation(pane, id, showBanner) {
  const title = h("h1", { class: "conversation-title" }, "Loading…");
  const meta = h("p", { class: "meta" });
  const older = h("div", { class: "older", role: "status", "aria-live": "polite" });
  const log = h("div", { class: "messages", role: "log", "aria-live": "polite", "aria-label": "Messages" });
  const transcript = h("div", { class: "transcript", tabindex: "0" }, older, log);
  const connection = h("div", { class: "connection", role: "status", "aria-live": "assertive", hidden: true });
  const progress = h("div", { class: "run-progress", hidden: true },
    h("progress", { max: "100", value: "0", "aria-label": "Run progress" }), h("span", { class: "note" }));
  const cancel = h("button", { type: "button", class: "cancel", hidden: true }, "Cancel run");
  const input = h("textarea", { name: "message", rows: "3", placeholder: "Message (Enter sends, Shift+Enter for a new line)" });
  const send = h("button", { type: "submit" }, "Send");
  const answer = h("div", { class: "answer", role: "status", "aria-live": "polite" });
  const composer = h("form", { class: "composer", "aria-label": "Send a message" },
    field("Message", input), h("div", { class: "actions" }, send, cancel), answer);
  pane.append(
    h("div", { class: "conversation-head" },
      h("a", { href: "#/chat", class: "back" }, "← Conversations"), title, meta,
      h("a", { href: `#/timeline/${id}`, class: "timeline-link" }, "Timeline")),
    connection, progress, transcript, composer);

  const shown = new Set(); // message ids on screen
  const runs = new Map(); // run id -> its assistant bubble
  let activeRun = null;
  let olderCursor = null;
  let loadingOlder = false;
  let stream = null;
  let closed = false;

  function atBottom() {
    return transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 60;
  }
  function stickToBottom(wasAtBottom) {
    if (wasAtBottom) transcript.scrollTop = transcript.scrollHeight;
  }

  function setActiveRun(runId) {
    activeRun = runId;
    cancel.hidden = !runId;
    // The bar stays at its last value after the run; a new run starts without one.
    if (runId && progress.dataset.runId !== runId) progress.hidden = true;
  }

  // ---- bubbles
  function userBubble(m) {
    const b = h("article", { class: "message user", dataset: { messageId: m.message_id, position: m.position } },
      h("header", {}, "You", h("time", {}, formatTime(m.created_at || m.timestamp))),
      h("div", { class: "content" }, m.content === null ? "(erased)" : m.content));
    if (m.queued) b.append(h("p", { class: "state" }, "queued: runs after the active run"));
    return b;
  }

  function assistantBubble(runId) {
    const content = h("div", { class: "content markdown" });
    const tools = h("div", { class: "tool-calls" });
    const output = h("div", { class: "output" });
    const state = h("p", { class: "state" });
    const b = h("article", { class: "message assistant", dataset: { runId } },
      h("header", {}, "Assistant"), tools, content, output, state);
    const bubble = { el: b, content, tools, output, state, text: "", calls: new Map(), pending: false };
    runs.set(runId, bubble);
    return bubble;
  }

  function paint(bubble) {
    if (bubble.pending) return;
    bubble.pending = true;
    requestAnimationFrame(() => {
      bubble.pending = false;
      const wasAtBottom = atBottom();
      renderMarkdown(bubble.content, bubble.text);
      bubble.el.dataset.text = bubble.text;
      stickToBottom(wasAtBottom);
    });
  }

  function toolCard(bubble, call) {
    let card = bubble.calls.get(call.tool_call_id);
    if (!card) {
      const result = h("pre", { class: "result" }, "running…");
      card = { el: h("details", { class: "tool-call" },
        h("summary", {}, `Tool: ${call.name}`),
        h("h4", {}, "Arguments"), h("pre", { class: "args" }, pretty(call.args)),
        h("h4", {}, "Result"), result), result };
      bubble.calls.set(call.tool_call_id, card);
      bubble.tools.append(card.el);
    }
    if (call.error) {
      card.result.textContent = `error: ${call.error}`;
      card.el.classList.add("failed");
    } else if (call.result !== undefined && call.result !== null) {
      card.result.textContent = pretty(call.result);
    }
    return card;
  }

  function showOutput(bubble, value) {
    clear(bubble.output);
    if (value === null || value === undefined) return;
    bubble.output.append(h("h4", {}, "Structured output"), h("pre", { class: "json" }, pretty(value)));
  }

  function compactionNote(summary, info) {
    const saved = info ? ` (${info.tokens_before} → ${info.tokens_after} tokens, up to position ${info.up_to_position})` : "";
    return h("details", { class: "compacted" },
      h("summary", {}, `History compacted here for the model${saved}`),
      h("p", {}, summary === null ? "(erased)" : summary));
  }

  function storedBubble(m) {
    if (m.role === "user") return userBubble(m);
    if (m.role === "compaction") return compactionNote(m.content, m.compaction);
    const bubble = runs.get(m.run_id) || assistantBubble(m.run_id);
    bubble.text = m.content === null ? "(erased)" : m.content;
    for (const call of m.tool_calls || []) toolCard(bubble, call);
    showOutput(bubble, m.output);
    renderMarkdown(bubble.content, bubble.text);
    bubble.el.dataset.text = bubble.text;
    bubble.el.dataset.messageId = m.message_id;
    return bubble.el;
  }

  // ---- history, newest first
  async function loadOlder() {
    if (loadingOlder || olderCursor === null) return;
    loadingOlder = true;
    older.textContent = "Loading older messages…";
    try {
      const page = await api(`/v1/conversations/${id}/messages${query({ order: "desc", before: olderCursor, limit: MESSAGE_PAGE })}`);
      const before = transcript.scrollHeight;
      const nodes = [];
      for (const m of page.items.reverse()) {
        if (shown.has(m.message_id)) continue;
        shown.add(m.message_id);
        nodes.push(storedBubble(m));
      }
      log.prepend(...nodes);
      transcript.scrollTop += transcript.scrollHeight - before;
      olderCursor = page.next;
      older.textContent = olderCursor === null ? "The beginning of the conversation." : "";
    } catch (error) {
      older.replaceChildren(errorBox(error));
    } finally {
      loadingOlder = false;
    }
  }
  transcript.addEventListener("scroll", () => {
    if (transcript.scrollTop < 120) loadOlder();
  });

  // ---- live events
  function onEvent({ data: event }) {
    const d = event.data || {};
    const wasAtBottom = atBottom();
    switch (event.type) {
      case "MessagePosted": {
        if (shown.has(d.message_id)) break;
        shown.add(d.message_id);
        log.append(userBubble({ ...d, position: event.position, timestamp: event.timestamp, content: event.data ? d.content : null }));
        break;
      }
      case "RunStarted": {
        const bubble = runs.get(d.run_id) || assistantBubble(d.run_id);
        if (!bubble.el.isConnected) log.append(bubble.el);
        // A retried run starts over: its text is that of its last attempt.
        bubble.text = "";
        clear(bubble.tools);
        bubble.calls.clear();
        clear(bubble.output);
        bubble.state.textContent = "";
        bubble.el.classList.add("running");
        paint(bubble);
        setActiveRun(d.run_id);
        break;
      }
      case "TokenStreamed": {
        const bubble = runs.get(d.run_id) || assistantBubble(d.run_id);
        if (!bubble.el.isConnected) log.append(bubble.el);
        bubble.text += d.delta === undefined || d.delta === null ? "" : d.delta;
        paint(bubble);
        break;
      }
      case "ToolCallStarted":
      case "ToolCallCompleted": {
        const bubble = runs.get(d.run_id) || assistantBubble(d.run_id);
        if (!bubble.el.isConnected) log.append(bubble.el);
        toolCard(bubble, { tool_call_id: d.tool_call_id, name: d.tool_name, args: d.args, result: d.result, error: d.error });
        break;
      }
      case "OutputPartial": {
        const bubble = runs.get(d.run_id);
        if (bubble) showOutput(bubble, d.output);
        break;
      }
      case "RunProgressReported": {
        progress.hidden = false;
        progress.dataset.runId = d.run_id;
        progress.querySelector("progress").value = d.percent || 0;
        progress.querySelector(".note").textContent = `${Math.round(d.percent || 0)}% ${d.note || ""}`;
        break;
      }
      case "MessageCompleted": {
        const bubble = runs.get(d.run_id) || assistantBubble(d.run_id);
        if (!bubble.el.isConnected) log.append(bubble.el);
        shown.add(d.message_id);
        bubble.el.dataset.messageId = d.message_id;
        if (event.data) bubble.text = d.content;
        showOutput(bubble, d.output);
        paint(bubble);
        break;
      }
      case "RunCompleted":
      case "RunFailed":
      case "RunCancelled":
      case "RunInterrupted": {
        const bubble = runs.get(d.run_id);
        if (bubble) {
          bubble.el.classList.remove("running");
          bubble.el.classList.add(event.type.slice(3).toLowerCase());
          bubble.state.textContent = {
            RunCompleted: d.usage ? `done · ${tokenCount(d.usage)} tokens` : "done",
            RunFailed: `failed: ${d.message || d.error}`,
            RunCancelled: "cancelled",
            RunInterrupted: `interrupted: ${d.reason}${d.retry ? " (it will be retried)" : ""}`,
          }[event.type];
        }
        if (activeRun === d.run_id) setActiveRun(null);
        break;
      }
      case "HistoryCompacted":
        if (shown.has(event.id)) break;
        shown.add(event.id);
        log.append(compactionNote(event.data ? d.summary : null, d));
        break;
      case "HistoryCleared":
        log.append(h("p", { class: "cleared" }, "History cleared here"));
        break;
      case "ConversationRenamed":
        title.textContent = d.title;
        break;
      default:
        break;
    }
    stickToBottom(wasAtBottom);
  }

  async function open() {
    try {
      const conversation = await api(`/v1/conversations/${id}`);
      title.textContent = conversation.title || "(untitled)";
      meta.textContent = `${conversation.agent} · busy policy: ${conversation.busy_policy}`;
      setActiveRun(conversation.active_run_id);
      const page = await api(`/v1/conversations/${id}/messages${query({ order: "desc", limit: MESSAGE_PAGE })}`);
      let last = 0;
      for (const m of page.items.reverse()) {
        shown.add(m.message_id);
        log.append(storedBubble(m));
        last = Math.max(last, m.position);
      }
      olderCursor = page.next;
      older.textContent = olderCursor === null ? "The beginning of the conversation." : "";
      transcript.scrollTop = transcript.scrollHeight;
      if (closed) return;
      stream = followEvents(`/v1/conversations/${id}/events`, {
        after: last,
        onEvent,
        onState(state) {
          connection.hidden = state === "live";
          connection.textContent = state === "live" ? "" : "Connection lost: reconnecting…";
          connection.className = `connection ${state}`;
          transcript.dataset.stream = state;
        },
        onError(error) {
          connection.hidden = false;
          connection.replaceChildren(errorBox(error));
        },
      });
      input.focus();
    } catch (error) {
      title.textContent = error.status === 404 ? "Conversation not found" : "Could not open the conversation";
      pane.querySelector(".transcript").replaceWith(errorBox(error));
      composer.hidden = true;
    }
  }

  async function sendMessage() {
    const content = input.value;
    if (!content.trim()) return;
    send.disabled = true;
    answer.textContent = "Sending…";
    try {
      const accepted = await api(`/v1/conversations/${id}/messages`, {
        method: "POST",
        body: { content, client_message_id: crypto.randomUUID() },
      });
      input.value = "";
      answer.textContent = accepted.queued ? "Queued: it runs after the active run." : "";
    } catch (error) {
      answer.replaceChildren(h("span", { class: "refused" }, "Refused: "), errorBox(error));
    } finally {
      send.disabled = false;
      input.focus();
    }
  }

  composer.addEventListener("submit", (event) => {
    event.preventDefault();
    sendMessage();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });
  cancel.addEventListener("click", async () => {
    if (!activeRun) return;
    cancel.disabled = true;
    answer.textContent = "Cancelling…";
    try {
      await api(`/v1/runs/${activeRun}/cancel`, { method: "POST" });
      answer.textContent = "Cancelled.";
    } catch (error) {
      answer.replaceChildren(errorBox(error));
    } finally {
      cancel.disabled = false;
    }
  });

  open();
  return () => {
    closed = true;
    if (stream) stream.close();
    showBanner("");
  };
}

function tokenCount(usage) {
  if (typeof usage.total_tokens === "number") return usage.total_tokens;
  return (usage.input_tokens || 0) + (usage.output_tokens || 0);
}
