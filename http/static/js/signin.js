// Sign in with a username and password (a JWT) or with an API key.
import { api, setCredential } from "/console/js/api.js";
import { errorBox, field, h } from "/console/js/dom.js";

export function renderSignIn(main, { notice, onSignedIn }) {
  const status = h("div", { class: "status", role: "status", "aria-live": "polite" });
  if (notice) status.append(h("p", { class: "notice" }, notice));

  const username = h("input", { name: "username", autocomplete: "username", required: true });
  const password = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const passwordForm = h("form", { class: "stack" },
    h("h2", {}, "Username and password"),
    field("Username", username),
    field("Password", password),
    h("button", { type: "submit" }, "Sign in"));
  passwordForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    status.replaceChildren(h("p", {}, "Signing in…"));
    try {
      const token = await api("/v1/users/login", {
        method: "POST",
        body: { username: username.value, password: password.value },
      });
      setCredential({ kind: "jwt", value: token.access_token });
      password.value = "";
      await onSignedIn();
    } catch (error) {
      status.replaceChildren(errorBox(error));
    }
  });

  const key = h("input", { name: "api-key", type: "password", autocomplete: "off", required: true });
  const keyForm = h("form", { class: "stack" },
    h("h2", {}, "API key"),
    field("API key", key),
    h("button", { type: "submit" }, "Sign in with key"));
  keyForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    setCredential({ kind: "key", value: key.value.trim() });
    status.replaceChildren(h("p", {}, "Checking the key…"));
    try {
      await api("/v1/users/me");
      key.value = "";
      await onSignedIn();
    } catch (error) {
      setCredential(null);
      status.replaceChildren(errorBox(error));
    }
  });

  main.append(h("section", { class: "panel signin" },
    h("h1", {}, "Sign in to threadlog"),
    status,
    h("div", { class: "columns" }, passwordForm, keyForm)));
  username.focus();
}
