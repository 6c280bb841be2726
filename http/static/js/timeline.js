// Timeline (owners and auditors): every event of a conversation in order, a position
// slider showing the conversation as it stood there, the chain's verification with its
// first broken link highlighted, and the NDJSON export.
import { api, download, query } from "/console/js/api.js";
import { clear, debounce, errorBox, field, formatTime, h } from "/console/js/dom.js";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const EVENT_PAGE = 1000;

export function renderTimeline(main, { me, params }) {
  const id = params[0];
  if (params[0] && !UUID.test(params[0])) {
    main.append(h("section", { class: "panel notfound" }, h("h1", {}, "404: no such conversation"),
      h("p", {}, "That is not a conversation id.")));
    return null;
  }
  if (!id) return renderPicker(main, me);
  const section = h("section", { class: "panel timeline" });
  main.append(section);
  const heading = h("h1", {}, "Timeline");
  const verify = h("div", { class: "verify", role: "status", "aria-live": "polite" }, "Verifying the chain…");
  const loadStatus = h("p", { class: "load-status", role: "status" }, "Loading events…");
  const slider = h("input", { type: "range", name: "position", min: "1", max: "1", value: "1", disabled: true });
  const sliderValue = h("output", { for: "position" }, "");
  const state = h("div", { class: "state-at", "aria-live": "polite" });
  const exportButton = h("button", { type: "button" }, "Export NDJSON");
  const exportStatus = h("span", { role: "status" });
  const rows = h("tbody");
  const table = h("table", { class: "events" },
    h("caption", {}, "Events in order"),
    h("thead", {}, h("tr", {}, ...["Position", "Type", "Actor", "Time", "Hash"].map((t) => h("th", { scope: "col" }, t)))),
    rows);
  section.append(
    heading, h("p", {}, h("a", { href: `#/chat/${id}` }, "Open in chat")),
    verify,
    h("div", { class: "toolbar" }, exportButton, exportStatus),
    h("div", { class: "slider" }, field("Position", slider), sliderValue),
    state, loadStatus, h("div", { class: "table-wrap" }, table));

  const events = [];
  let closed = false;

  async function loadEvents() {
    let after = 0;
    try {
      for (;;) {
        const page = await api(`/v1/conversations/${id}/events${query({ after, limit: EVENT_PAGE })}`, {
          headers: { Accept: "application/json" },
        });
        if (closed) return;
        const fragment = document.createDocumentFragment();
        for (const event of page.items) {
          events.push(event);
          fragment.append(h("tr", { dataset: { position: event.position }, id: `event-${event.position}` },
            h("td", {}, String(event.position)),
            h("td", {}, event.type),
            h("td", {}, event.actor),
            h("td", {}, h("time", { datetime: event.timestamp }, formatTime(event.timestamp))),
            h("td", { class: "hash", title: event.hash }, event.hash.slice(0, 16) + "…")));
        }
        rows.append(fragment);
        loadStatus.textContent = `Loaded ${events.length} events…`;
        if (page.next === null) break;
        after = page.next;
      }
      loadStatus.textContent = `${events.length} events.`;
      if (events.length) {
        const last = events[events.length - 1].position;
        slider.max = String(last);
        slider.value = String(last);
        slider.disabled = false;
        showState(last);
      }
    } catch (error) {
      loadStatus.replaceChildren(errorBox(error));
      if (error.status === 404) heading.textContent = "Conversation not found";
    }
  }

  async function runVerify() {
    try {
      const result = await api(`/v1/audit/conversations/${id}/verify`);
      if (closed) return;
      clear(verify);
      verify.className = `verify ${result.intact ? "intact" : "broken"}`;
      if (result.intact) {
        verify.append(h("strong", {}, "Chain intact"), ` · ${result.events} events up to position ${result.last_position}`);
      } else {
        const b = result.first_broken;
        verify.append(h("strong", {}, "Chain broken"), ` at position ${b.position}: ${b.problem}`,
          b.detail ? ` (${b.detail})` : "", " ", h("a", { href: `#/timeline/${id}`, class: "jump" }, "show"));
        verify.querySelector(".jump").addEventListener("click", (e) => {
          e.preventDefault();
          markBroken(b.position, true);
        });
        markBroken(b.position, false);
      }
    } catch (error) {
      verify.replaceChildren(errorBox(error));
    }
  }

  function markBroken(position, scroll) {
    // The broken link is at `position`: its row, or (deleted) where it would be.
    const row = rows.querySelector(`tr[data-position="${position}"]`)
      || [...rows.children].find((r) => Number(r.dataset.position) > position);
    if (row) {
      row.classList.add("broken");
      if (scroll) row.scrollIntoView({ block: "center" });
    } else if (events.length === 0) {
      setTimeout(() => markBroken(position, scroll), 200);
    }
  }

  const showState = debounce(async (at) => {
    sliderValue.textContent = `at position ${at}`;
    for (const row of rows.querySelectorAll("tr.at")) row.classList.remove("at");
    const row = rows.querySelector(`tr[data-position="${at}"]`);
    if (row) row.classList.add("at");
    state.replaceChildren(h("p", {}, "Loading…"));
    try {
      const s = await api(`/v1/conversations/${id}/state${query({ at })}`);
      if (closed) return;
      heading.textContent = `Timeline: ${s.title || "(untitled)"}`;
      const list = h("ol", { class: "state-messages" });
      for (const m of s.messages) {
        list.append(h("li", { class: m.role }, h("strong", {}, `${m.role} @${m.position}: `),
          m.content === null ? "(erased)" : m.content));
      }
      state.replaceChildren(
        h("h2", {}, `As it stood at position ${s.position} of ${s.last_position}`),
        h("p", { class: "meta" }, `${s.messages.length} messages · ${formatTime(s.timestamp)}${s.archived ? " · archived" : ""}`),
        list,
        s.active_run ? h("div", { class: "active-run" }, h("strong", {}, "Run in progress: "), s.active_run.partial_text) : "",
      );
    } catch (error) {
      state.replaceChildren(errorBox(error));
    }
  }, 120);

  slider.addEventListener("input", () => showState(Number(slider.value)));

  exportButton.addEventListener("click", async () => {
    exportStatus.textContent = "Exporting…";
    try {
      let size;
      if (me.roles.includes("auditor")) {
        size = await download(`/v1/audit/events${query({ conversation_id: id })}`, `${id}.ndjson`, "application/x-ndjson");
      } else {
        // Owners: the same envelopes as /events serves, one per line.
        const blob = new Blob(events.map((e) => JSON.stringify(e) + "\n"), { type: "application/x-ndjson" });
        const url = URL.createObjectURL(blob);
        const link = h("a", { href: url, download: `${id}.ndjson` });
        document.body.append(link);
        link.click();
        link.remove();
        setTimeout(() => URL.revokeObjectURL(url), 10000);
        size = blob.size;
      }
      exportStatus.textContent = `Exported ${size} bytes.`;
    } catch (error) {
      exportStatus.replaceChildren(errorBox(error));
    }
  });

  loadEvents();
  runVerify();
  return () => { closed = true; };
}

function renderPicker(main, me) {
  const input = h("input", { name: "conversation-id", placeholder: "a conversation id", required: true });
  const form = h("form", { class: "stack", "aria-label": "Open a timeline" },
    field("Conversation id", input), h("button", { type: "submit" }, "Open timeline"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    location.hash = `#/timeline/${encodeURIComponent(input.value.trim())}`;
  });
  const list = h("ul", { class: "plain" });
  main.append(h("section", { class: "panel" }, h("h1", {}, "Timeline"), form, list));
  if (me.roles.includes("user")) {
    api("/v1/conversations?limit=20").then((page) => {
      for (const c of page.items) list.append(h("li", {}, h("a", { href: `#/timeline/${c.id}` }, c.title || c.id)));
    }).catch((error) => list.replaceChildren(errorBox(error)));
  }
}
