// Admin: create users with roles, issue keys (shown once) and revoke them, and erase a
// user's content after a confirmation.
import { api, query } from "/console/js/api.js";
import { errorBox, field, h } from "/console/js/dom.js";

const ROLES = ["user", "auditor", "analyst", "admin"];

export function renderAdmin(main) {
  const section = h("section", { class: "panel admin" }, h("h1", {}, "Admin"));
  main.append(section);
  section.append(createUserForm(), keysPanel(), findUserPanel());
}

function shownOnce(issued) {
  const value = h("input", { class: "secret", readonly: true, value: issued.key, "aria-label": "The new key" });
  const copy = h("button", { type: "button" }, "Copy");
  copy.addEventListener("click", async () => {
    value.select();
    try {
      await navigator.clipboard.writeText(issued.key);
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Select and copy it";
    }
  });
  return h("div", { class: "issued", role: "status" },
    h("p", {}, h("strong", {}, "Key issued: "), `${issued.name} (${issued.prefix}…, id ${issued.id}). `,
      "It is shown only now; copy it."),
    h("div", { class: "row" }, value, copy));
}

function createUserForm() {
  const username = h("input", { name: "new-username", required: true, maxlength: "64", autocomplete: "off" });
  const password = h("input", { name: "new-password", type: "password", autocomplete: "new-password" });
  const roles = ROLES.map((role) => h("input", { type: "checkbox", name: "roles", value: role, checked: role === "user" }));
  const status = h("div", { role: "status", "aria-live": "polite" });
  const form = h("form", { class: "stack", "aria-labelledby": "create-user" },
    h("h2", { id: "create-user" }, "Create a user"),
    field("New user's name", username),
    field("Password (optional: without one the user signs in with a key)", password),
    h("fieldset", {}, h("legend", {}, "Roles"),
      ...roles.map((box, i) => h("label", { class: "check" }, box, ` ${ROLES[i]}`))),
    h("button", { type: "submit" }, "Create user"),
    status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "Creating…";
    try {
      const body = { username: username.value.trim(), roles: roles.filter((b) => b.checked).map((b) => b.value) };
      if (password.value) body.password = password.value;
      const user = await api("/v1/admin/users", { method: "POST", body });
      status.replaceChildren(h("p", { class: "ok" }, `Created ${user.username} (${user.roles.join(", ")}), id ${user.id}.`));
      username.value = "";
      password.value = "";
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  return form;
}

function keysPanel() {
  const name = h("input", { name: "key-name", value: "console", maxlength: "100" });
  const status = h("div", { role: "status", "aria-live": "polite" });
  const issued = h("ul", { class: "keys", "aria-label": "Keys issued on this page" });
  const revokeId = h("input", { name: "revoke-key-id", placeholder: "key id", required: true });
  const revokeStatus = h("div", { role: "status", "aria-live": "polite" });
  const issueForm = h("form", { class: "stack", "aria-label": "Issue a key for yourself" },
    field("Key name", name), h("button", { type: "submit" }, "Issue key"), status);
  const revokeForm = h("form", { class: "stack", "aria-label": "Revoke a key" },
    field("Key id", revokeId), h("button", { type: "submit" }, "Revoke key"), revokeStatus);

  async function revoke(id, out) {
    out.textContent = "Revoking…";
    try {
      const r = await api(`/v1/keys/${encodeURIComponent(id)}`, { method: "DELETE" });
      out.replaceChildren(h("span", { class: "ok" }, `Revoked ${r.prefix}… (${r.id}).`));
      return true;
    } catch (error) {
      out.replaceChildren(errorBox(error));
      return false;
    }
  }

  issueForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "Issuing…";
    try {
      const key = await api("/v1/keys", { method: "POST", body: { name: name.value || "console" } });
      status.replaceChildren(shownOnce(key));
      const rowStatus = h("span", { role: "status" });
      const button = h("button", { type: "button", class: "danger" }, "Revoke");
      button.addEventListener("click", async () => {
        if (await revoke(key.id, rowStatus)) button.disabled = true;
      });
      issued.append(h("li", { dataset: { keyId: key.id } }, `${key.name} · ${key.prefix}… · ${key.id} `, button, " ", rowStatus));
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  revokeForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    await revoke(revokeId.value.trim(), revokeStatus);
  });
  return h("div", { class: "stack" }, h("h2", {}, "API keys"), issueForm, issued, revokeForm);
}

function findUserPanel() {
  const username = h("input", { name: "find-username", required: true, autocomplete: "off" });
  const status = h("div", { role: "status", "aria-live": "polite" });
  const form = h("form", { class: "stack", "aria-labelledby": "find-user" },
    h("h2", { id: "find-user" }, "A user: keys and erasure"),
    field("User to find", username), h("button", { type: "submit" }, "Find user"), status);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.textContent = "Looking…";
    try {
      const user = await api(`/v1/admin/users${query({ username: username.value.trim() })}`);
      status.replaceChildren(userActions(user));
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });
  return form;
}

function userActions(user) {
  const out = h("div", { role: "status", "aria-live": "polite" });
  const issue = h("button", { type: "button" }, `Issue a key for ${user.username}`);
  issue.addEventListener("click", async () => {
    try {
      const key = await api(`/v1/admin/users/${user.id}/keys`, { method: "POST", body: { name: "issued by an admin" } });
      out.replaceChildren(shownOnce(key));
    } catch (error) {
      out.replaceChildren(errorBox(error));
    }
  });
  const confirmInput = h("input", { name: "confirm-erase", autocomplete: "off" });
  const erase = h("button", { type: "button", class: "danger", disabled: true }, "Erase content");
  confirmInput.addEventListener("input", () => {
    erase.disabled = confirmInput.value !== user.username;
  });
  erase.addEventListener("click", async () => {
    if (confirmInput.value !== user.username) return;
    erase.disabled = true;
    out.textContent = "Erasing…";
    try {
      const r = await api(`/v1/users/${user.id}/content`, { method: "DELETE" });
      out.replaceChildren(h("p", { class: "ok" }, `Erased ${user.username}'s content: ${r.keys_erased} content keys destroyed at ${r.erased_at}.`));
    } catch (error) {
      out.replaceChildren(errorBox(error));
    }
  });
  return h("div", { class: "user-card" },
    h("p", {}, h("strong", {}, user.username), ` · ${user.roles.join(", ")} · id ${user.id}`),
    issue,
    h("div", { class: "erase" },
      h("p", {}, "Erasing destroys the user's content keys: every message, token and tool call they own reads as erased, for good. The events and hash chains stay."),
      field(`Type ${user.username} to confirm`, confirmInput), erase),
    out);
}
