// The console's shell: sign-in state, navigation by role, and a hash router
// (#/chat, #/chat/<id>, #/timeline/<id>, #/analytics, #/admin, #/signin).
import { api, credential, setCredential, whenUnauthorized } from "/console/js/api.js";
import { clear, h } from "/console/js/dom.js";
import { renderSignIn } from "/console/js/signin.js";
import { renderChat } from "/console/js/chat.js";
import { renderTimeline } from "/console/js/timeline.js";
import { renderAnalytics } from "/console/js/analytics.js";
import { renderAdmin } from "/console/js/admin.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const signOutButton = document.getElementById("sign-out");
const banner = document.getElementById("banner");

// Which roles may open each page (the API enforces the same; this only hides links).
const PAGES = {
  chat: { roles: ["user"], render: renderChat },
  timeline: { roles: ["user", "auditor"], render: renderTimeline },
  analytics: { roles: ["analyst", "admin"], render: renderAnalytics },
  admin: { roles: ["admin"], render: renderAdmin },
};

let me = null;
let cleanup = null;
let signInNotice = "";

function allowed(page) {
  return me && PAGES[page].roles.some((role) => me.roles.includes(role));
}

function firstPage() {
  return Object.keys(PAGES).find(allowed) || "chat";
}

export function showBanner(text, kind = "info") {
  if (!text) {
    banner.hidden = true;
    banner.textContent = "";
    return;
  }
  banner.hidden = false;
  banner.className = `banner ${kind}`;
  banner.textContent = text;
}

function updateChrome() {
  nav.hidden = !me;
  signOutButton.hidden = !me;
  who.textContent = me ? `${me.username} (${me.roles.join(", ")})` : "";
  for (const link of nav.querySelectorAll("a")) {
    link.hidden = !allowed(link.dataset.page);
  }
}

async function loadMe() {
  if (!credential()) {
    me = null;
    return;
  }
  try {
    me = await api("/v1/users/me");
  } catch (error) {
    me = null;
    if (error.status === 401) setCredential(null);
    else throw error;
  }
}

function signOut(notice = "") {
  setCredential(null);
  me = null;
  signInNotice = notice;
  updateChrome();
  if (location.hash === "#/signin") route();
  else location.hash = "#/signin";
}

whenUnauthorized((error) => {
  if (me) signOut(`Signed out: ${error.message} (401)`);
});

signOutButton.addEventListener("click", () => signOut("Signed out."));

async function route() {
  if (cleanup) {
    try {
      cleanup();
    } catch {
      /* a page's cleanup failing must not stop navigation */
    }
    cleanup = null;
  }
  showBanner("");
  clear(main);
  const [, page = "", ...rest] = (location.hash || "#/").slice(1).split("/");
  if (!me) {
    if (page !== "signin") {
      location.hash = "#/signin";
      return;
    }
  }
  for (const link of nav.querySelectorAll("a")) {
    link.classList.toggle("current", link.dataset.page === page);
    if (link.dataset.page === page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  if (page === "signin") {
    if (me) {
      location.hash = `#/${firstPage()}`;
      return;
    }
    renderSignIn(main, {
      notice: signInNotice,
      onSignedIn: async () => {
        signInNotice = "";
        await loadMe();
        updateChrome();
        location.hash = `#/${firstPage()}`;
      },
    });
    return;
  }
  if (page === "") {
    location.hash = `#/${firstPage()}`;
    return;
  }
  const target = PAGES[page];
  if (!target) {
    main.append(
      h("section", { class: "panel notfound" }, h("h1", {}, "404: no such page"),
        h("p", {}, "The console has no page at "), h("code", {}, location.hash), " ",
        h("a", { href: `#/${firstPage()}` }, "Back")),
    );
    return;
  }
  if (!allowed(page)) {
    main.append(
      h("section", { class: "panel" }, h("h1", {}, "403: not for your roles"),
        h("p", {}, `This page needs the role ${target.roles.join(" or ")}.`)),
    );
    return;
  }
  document.title = `threadlog · ${page}`;
  cleanup = target.render(main, { me, params: rest.map(decodeURIComponent), showBanner }) || null;
}

window.addEventListener("hashchange", route);

(async () => {
  try {
    await loadMe();
  } catch (error) {
    showBanner(`The server cannot be reached: ${error.message}`, "warn");
  }
  updateChrome();
  route();
})();
